# Quality as numbers: a digit classifier judges samples, interpolation paths and real-digit
# interpolations; DDIM's fidelity at fewer steps and its inversion are measured against itself.


rule train_classifier:
    input:
        train=DATA["train"],
        heldout=DATA["heldout"],
    output:
        model=CLASSIFIER,
        summary=report(
            "results/classifier/summary.json",
            caption="../report/classifier.rst",
            category="Quality",
        ),
    log:
        "logs/train_classifier.log",
    benchmark:
        benchmark_file("train_classifier")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        settings=config["classifier"],
        device=config["device"],
    script:
        "../scripts/train_classifier.py"


rule sample_quality:
    input:
        model=model_input,
        card=MODEL_CARD,
        classifier=CLASSIFIER,
        train=DATA["train"],
        heldout=DATA["heldout"],
    output:
        csv=report(
            f"results/{PER_MODEL}quality/sample_quality.csv",
            caption="../report/sample_quality_csv.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
        json=f"results/{PER_MODEL}quality/sample_quality.json",
        png=report(
            f"results/{PER_MODEL}quality/sample_quality.png",
            caption="../report/sample_quality.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
        samples=report(
            f"results/{PER_MODEL}quality/samples.png",
            caption="../report/samples.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}sample_quality.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}sample_quality")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["quality"],
        device=config["device"],
        sampling=SAMPLING,
    script:
        "../scripts/sample_quality.py"


rule interpolation_metrics:
    input:
        classifier=CLASSIFIER,
        grids=[
            f"results/{PER_MODEL}interpolation/{variant}.pt"
            for variant in config["quality"]["interpolation_variants"]
        ],
    output:
        csv=report(
            f"results/{PER_MODEL}quality/interpolation_metrics.csv",
            caption="../report/interpolation_metrics_csv.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
        png=report(
            f"results/{PER_MODEL}quality/interpolation_metrics.png",
            caption="../report/interpolation_metrics.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}interpolation_metrics.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}interpolation_metrics")
    conda:
        CONDA_ENV
    threads: config["threads"]
    params:
        model_description=model_description,
        variants=config["quality"]["interpolation_variants"],
        confidence=config["quality"]["confidence"],
        device=config["device"],
    script:
        "../scripts/interpolation_metrics.py"


rule ddim_fidelity:
    input:
        model=model_input,
        card=MODEL_CARD,
        endpoints=f"results/{PER_MODEL}noise/ddim_endpoints.pt",
        heldout=DATA["heldout"],
    output:
        csv=report(
            f"results/{PER_MODEL}quality/ddim_fidelity.csv",
            caption="../report/ddim_fidelity_csv.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
        png=report(
            f"results/{PER_MODEL}quality/ddim_fidelity.png",
            caption="../report/ddim_fidelity.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
        inversion=report(
            f"results/{PER_MODEL}quality/ddim_inversion.csv",
            caption="../report/ddim_inversion.rst",
            category="Quality",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}ddim_fidelity.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}ddim_fidelity")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["fidelity"],
        interpolation=config["interpolation"],
        device=config["device"],
        sampling=SAMPLING,
    script:
        "../scripts/ddim_fidelity.py"


rule interpolate_real_digits:
    input:
        model=model_input,
        card=MODEL_CARD,
        heldout=DATA["heldout"],
    output:
        grid=report(
            f"results/{PER_MODEL}interp_real.png",
            caption="../report/interp_real.rst",
            category="Interpolation",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}interpolate_real_digits.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}interpolate_real_digits")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["real_interpolation"],
        steps=config["interpolation"]["steps"],
        batch_size=config["interpolation"]["batch_size"],
        device=config["device"],
        sampling=SAMPLING,
    script:
        "../scripts/interpolate_real_digits.py"
