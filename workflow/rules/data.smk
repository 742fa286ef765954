# A local rule: it runs on the host where snakemake runs, never as a cluster job (it may download,
# and compute nodes are often offline).
localrules:
    download_mnist,


rule download_mnist:
    output:
        train=DATA["train"],
        validation=DATA["validation"],
        heldout=DATA["heldout"],
        manifest=DATA["manifest"],
    log:
        "logs/download_mnist.log",
    benchmark:
        benchmark_file("download_mnist")
    conda:
        CONDA_ENV
    threads: 1
    params:
        data=config["data"],
        out_dir=lambda wildcards, output: Path(output.manifest).parent,
    script:
        "../scripts/download_mnist.py"
