wildcard_constraints:
    sampler="ddpm|ddim",
    method="lerp|slerp",
    noise="independent|shared",


# Drawn in the model's sample shape from a seeded CPU generator: every model of a sweep with the
# same shape decodes the same starting noise, which makes their grids comparable row by row.
rule noise_endpoints:
    input:
        card=MODEL_CARD,
    output:
        endpoints=f"results/{PER_MODEL}noise/{{sampler}}_endpoints.pt",
    log:
        f"logs/{PER_MODEL}noise_endpoints_{{sampler}}.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}noise_endpoints_{{sampler}}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        n=config["interpolation"]["n"],
        seed=lambda wildcards: config["interpolation"]["seed"][wildcards.sampler],
    script:
        "../scripts/noise_endpoints.py"


# One decoded grid, kept as images so that the PNG and the interpolation metrics read the same
# samples: {method} lerp | slerp, {noise} independent | shared per-step noise within a row (DDPM).
rule interpolation_samples:
    input:
        model=model_input,
        card=MODEL_CARD,
        endpoints=f"results/{PER_MODEL}noise/{{sampler}}_endpoints.pt",
    output:
        images=f"results/{PER_MODEL}interpolation/{{sampler}}-{{method}}-{{noise}}.pt",
    log:
        f"logs/{PER_MODEL}interpolation_samples/{{sampler}}-{{method}}-{{noise}}.log",
    benchmark:
        benchmark_file(
            f"{PER_MODEL}interpolation_samples/{{sampler}}-{{method}}-{{noise}}"
        )
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=1,
    params:
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        settings=config["interpolation"],
        device=config["device"],
        sampling=SAMPLING,
    script:
        "../scripts/interpolation_samples.py"


# The configured grid of each sampler as a picture.
rule interpolation_grid_ddpm:
    input:
        images=f"results/{PER_MODEL}interpolation/ddpm-{GRID_METHOD}-independent.pt",
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
    threads: 1
    params:
        model_description=model_description,
    script:
        "../scripts/interpolation_grid.py"


use rule interpolation_grid_ddpm as interpolation_grid_ddim with:
    input:
        images=f"results/{PER_MODEL}interpolation/ddim-{GRID_METHOD}-independent.pt",
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
