# Runs only for a model whose checkpoint is not given or names a file that does not exist: see
# model_checkpoint(). In a sweep, once per such model (train/model/diffusion overrides merged in).
rule train:
    input:
        train=DATA["train"],
        validation=DATA["validation"],
        manifest=DATA["manifest"],
    output:
        model=TRAINED_CHECKPOINT,
        history=f"results/{PER_MODEL}train/history.csv",
        curve=report(
            f"results/{PER_MODEL}train/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}train.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}train")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_settings("model"),
        diffusion=model_settings("diffusion"),
        train=model_settings("train"),
        device=config["device"],
        # Not an output: it must survive a failed or killed job so that the rerun resumes.
        state=f"results/{PER_MODEL}train/resume_state.pt",
    script:
        "../../scripts/train.py"
