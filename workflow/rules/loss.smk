rule timestep_loss:
    input:
        model=model_checkpoint(),
        heldout=DATA["heldout"],
    output:
        csv=report(
            "results/timestep_loss.csv",
            caption="../report/timestep_loss_csv.rst",
            category="Loss",
        ),
    log:
        "logs/timestep_loss.log",
    benchmark:
        benchmark_file("timestep_loss")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        settings=config["timestep_loss"],
        device=config["device"],
    script:
        "../../scripts/timestep_loss.py"


rule plot_timestep_loss:
    input:
        csv="results/timestep_loss.csv",
    output:
        png=report(
            "results/timestep_loss.png",
            caption="../report/timestep_loss.rst",
            category="Loss",
        ),
    log:
        "logs/plot_timestep_loss.log",
    benchmark:
        benchmark_file("plot_timestep_loss")
    conda:
        CONDA_ENV
    threads: 1
    script:
        "../../scripts/plot_timestep_loss.py"
