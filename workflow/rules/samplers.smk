# Which sampler, and how many steps: every configured sampler at every step count and spacing
# decodes the same seeded noises, judged against the held-out digits, timed and counted
# (sampler_table.py). Its own target, not the default one: snakemake samplers (every model's table,
# and in a sweep their comparison), or one model's results/samplers/samplers.csv.

SAMPLER_COMPARISON = (
    ["results/compare/samplers.csv", "results/compare/samplers.png"] if SWEEP else []
)


rule samplers:
    input:
        for_each_model(f"results/{PER_MODEL}samplers/samplers.csv"),
        SAMPLER_COMPARISON,


rule sampler_table:
    input:
        model=model_input,
        card=MODEL_CARD,
        classifier=CLASSIFIER,
        train=DATA["train"],
        heldout=DATA["heldout"],
    output:
        csv=report(
            f"results/{PER_MODEL}samplers/samplers.csv",
            caption="../report/samplers_csv.rst",
            category="Sampling",
            subcategory=REPORT_SUBCATEGORY,
        ),
        png=report(
            f"results/{PER_MODEL}samplers/samplers.png",
            caption="../report/samplers.rst",
            category="Sampling",
            subcategory=REPORT_SUBCATEGORY,
        ),
        grid=report(
            f"results/{PER_MODEL}samplers/grid.png",
            caption="../report/samplers_grid.rst",
            category="Sampling",
            subcategory=REPORT_SUBCATEGORY,
        ),
        json=f"results/{PER_MODEL}samplers/samplers.json",
    log:
        f"logs/{PER_MODEL}sampler_table.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}sampler_table")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["samplers"],
        nearest_k=config["quality"]["nearest_k"],
        device=config["device"],
        sampling=SAMPLING,
    script:
        "../scripts/sampler_table.py"


rule compare_samplers:
    input:
        csvs=expand("results/{model}/samplers/samplers.csv", model=list(MODELS)),
    output:
        csv=report(
            "results/compare/samplers.csv",
            caption="../report/compare_samplers_csv.rst",
            category="Comparison",
        ),
        png=report(
            "results/compare/samplers.png",
            caption="../report/compare_samplers.rst",
            category="Comparison",
        ),
    log:
        "logs/compare_samplers.log",
    benchmark:
        benchmark_file("compare_samplers")
    conda:
        CONDA_ENV
    threads: 1
    params:
        models=list(MODELS),
    script:
        "../scripts/compare_samplers.py"
