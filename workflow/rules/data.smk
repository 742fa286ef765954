rule download_mnist:
    output:
        train=DATA["train"],
        heldout=DATA["heldout"],
        manifest=DATA["manifest"],
    params:
        data=config["data"],
        out_dir=lambda wildcards, output: Path(output.manifest).parent,
    log:
        "logs/download_mnist.log",
    benchmark:
        benchmark_file("download_mnist")
    threads: 1
    script:
        "../../scripts/download_mnist.py"
