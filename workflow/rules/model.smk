# Runs only when config["checkpoint"] names a file that does not exist: see model_checkpoint().
rule train:
    input:
        train=DATA["train"],
        heldout=DATA["heldout"],
        manifest=DATA["manifest"],
    output:
        model=TRAINED_CHECKPOINT,
        history="results/train/history.csv",
        curve=report(
            "results/train/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
        ),
    log:
        "logs/train.log",
    benchmark:
        benchmark_file("train")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=config["model"],
        diffusion=config["diffusion"],
        train=config["train"],
        device=config["device"],
        # Not an output: it must survive a failed or killed job so that the rerun resumes.
        state="results/train/resume_state.pt",
    script:
        "../../scripts/train.py"
