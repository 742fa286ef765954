# Diffusion-model diagnostics: per-timestep loss and noise-space interpolation for a DDPM on MNIST.
# This file only configures and includes; the rules live in workflow/rules, the logic in the
# diffusion_diagnostics package.


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/loss.smk"
include: "workflow/rules/interpolation.smk"


rule all:
    default_target: True
    input:
        "results/timestep_loss.csv",
        "results/timestep_loss.png",
        "results/noise/ddpm_endpoints.pt",
        "results/noise/ddim_endpoints.pt",
        "results/interp.png",
        "results/interp_ddim.png",
    localrule: True
