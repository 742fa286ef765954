# Which sampler, and how many steps: every configured sampler at every step count decodes the same
# seeded noises, judged against the held-out digits, timed and counted (sampler_table.py). Its own
# target, not the default one: snakemake results/samplers/samplers.csv


rule sampler_table:
    input:
        model=model_input,
        card=MODEL_CARD,
        classifier=CLASSIFIER,
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
