# Diffusion-model diagnostics: per-timestep loss and noise-space interpolation for a DDPM on MNIST.
# This file only configures and includes; the rules live in workflow/rules, the logic in the
# diffusion_diagnostics package.


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/loss.smk"
include: "workflow/rules/interpolation.smk"
include: "workflow/rules/quality.smk"


# With `models` in the config: every model's files under results/<model>/ and their comparison
# under results/compare/; without: the files below as they are.
rule all:
    default_target: True
    input:
        for_each_model(
            f"results/{PER_MODEL}timestep_loss.csv",
            f"results/{PER_MODEL}timestep_loss.png",
            f"results/{PER_MODEL}timestep_loss_snr.png",
            f"results/{PER_MODEL}nll.json",
            f"results/{PER_MODEL}interp.png",
            f"results/{PER_MODEL}interp_ddim.png",
            f"results/{PER_MODEL}interp_real.png",
            f"results/{PER_MODEL}quality/sample_quality.csv",
            f"results/{PER_MODEL}quality/interpolation_metrics.csv",
            f"results/{PER_MODEL}quality/ddim_fidelity.csv",
            f"results/{PER_MODEL}noise/ddpm_endpoints.pt",
            f"results/{PER_MODEL}noise/ddim_endpoints.pt",
            MODEL_CARD,
        ),
        COMPARISON,
    localrule: True
