rule timestep_loss:
    input:
        model=model_input,
        card=MODEL_CARD,
        heldout=DATA["heldout"],
        manifest=DATA["manifest"],
    output:
        csv=report(
            f"results/{PER_MODEL}timestep_loss.csv",
            caption="../report/timestep_loss_csv.rst",
            category="Loss",
            subcategory=REPORT_SUBCATEGORY,
        ),
        nll=report(
            f"results/{PER_MODEL}nll.json",
            caption="../report/nll.rst",
            category="Loss",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}timestep_loss.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}timestep_loss")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["timestep_loss"],
        device=config["device"],
    script:
        "../scripts/timestep_loss.py"


rule plot_timestep_loss:
    input:
        csv=f"results/{PER_MODEL}timestep_loss.csv",
    output:
        png=report(
            f"results/{PER_MODEL}timestep_loss.png",
            caption="../report/timestep_loss.rst",
            category="Loss",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}plot_timestep_loss.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}plot_timestep_loss")
    conda:
        CONDA_ENV
    threads: 1
    params:
        model_description=model_description,
    script:
        "../scripts/plot_timestep_loss.py"


rule plot_timestep_loss_snr:
    input:
        csv=f"results/{PER_MODEL}timestep_loss.csv",
        nll=f"results/{PER_MODEL}nll.json",
    output:
        png=report(
            f"results/{PER_MODEL}timestep_loss_snr.png",
            caption="../report/timestep_loss_snr.rst",
            category="Loss",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}plot_timestep_loss_snr.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}plot_timestep_loss_snr")
    conda:
        CONDA_ENV
    threads: 1
    params:
        model_description=model_description,
    script:
        "../scripts/plot_timestep_loss_snr.py"


# A sweep only (config `models`): every model's loss, measured with the same settings on the same
# held-out digits, in one table and one figure against log-SNR.
rule compare_timestep_loss:
    input:
        csvs=expand("results/{model}/timestep_loss.csv", model=list(MODELS)),
        nlls=expand("results/{model}/nll.json", model=list(MODELS)),
    output:
        csv=report(
            "results/compare/timestep_loss.csv",
            caption="../report/compare_timestep_loss_csv.rst",
            category="Comparison",
        ),
        png=report(
            "results/compare/timestep_loss.png",
            caption="../report/compare_timestep_loss.rst",
            category="Comparison",
        ),
    log:
        "logs/compare_timestep_loss.log",
    benchmark:
        benchmark_file("compare_timestep_loss")
    conda:
        CONDA_ENV
    threads: 1
    params:
        models=list(MODELS),
    script:
        "../scripts/compare_timestep_loss.py"
