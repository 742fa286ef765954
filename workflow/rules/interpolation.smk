wildcard_constraints:
    sampler="ddpm|ddim",


# Shared by all models of a sweep: every model's grid decodes the same starting noise, which is what
# makes the grids of different models comparable row by row.
rule noise_endpoints:
    output:
        endpoints="results/noise/{sampler}_endpoints.pt",
    log:
        "logs/noise_endpoints_{sampler}.log",
    benchmark:
        benchmark_file("noise_endpoints_{sampler}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        n=config["interpolation"]["n"],
        seed=lambda wildcards: config["interpolation"]["seed"][wildcards.sampler],
        shape=SAMPLE_SHAPE,
    script:
        "../../scripts/noise_endpoints.py"


rule interpolation_grid_ddpm:
    input:
        model=model_checkpoint,
        endpoints="results/noise/ddpm_endpoints.pt",
    output:
        grid=report(
            f"results/{PER_MODEL}interp.png",
            caption="../report/interp.rst",
            category="Interpolation",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}interpolation_grid_ddpm.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}interpolation_grid_ddpm")
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        sampler="ddpm",
        settings=config["interpolation"],
        device=config["device"],
    script:
        "../../scripts/interpolation_grid.py"


use rule interpolation_grid_ddpm as interpolation_grid_ddim with:
    input:
        model=model_checkpoint,
        endpoints="results/noise/ddim_endpoints.pt",
    output:
        grid=report(
            f"results/{PER_MODEL}interp_ddim.png",
            caption="../report/interp_ddim.rst",
            category="Interpolation",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}interpolation_grid_ddim.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}interpolation_grid_ddim")
    conda:
        CONDA_ENV
    params:
        sampler="ddim",
        settings=config["interpolation"],
        device=config["device"],
