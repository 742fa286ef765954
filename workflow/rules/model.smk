# Runs only for a model whose checkpoint is `train` (in a sweep also: no checkpoint of its own), see
# model_input(); in a sweep once per such model (train/model/diffusion overrides merged in).
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
        # Nor are the snapshots: a resumed run keeps those made before it stopped.
        snapshots=SNAPSHOTS,
        buckets=config["timestep_loss"]["buckets"],
    script:
        "../scripts/train.py"


# A Hugging Face Hub model (checkpoint: hf:owner/name[@revision]), fetched once into
# resources/models/ and then read as the diffusers folder it is. A local rule: compute nodes are
# often offline, as for download_mnist.
localrules:
    download_model,


rule download_model:
    output:
        folder=directory("resources/models/{hub_folder}"),
    log:
        "logs/download_model/{hub_folder}.log",
    benchmark:
        benchmark_file("download_model/{hub_folder}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        hub_id=lambda wildcards: HUB_MODELS[wildcards.hub_folder],
    script:
        "../scripts/download_model.py"


# What every model rule needs to know of its model before running it: its kind, its process, its
# sample shape and how digits are brought to that shape (config image_fit).
rule describe_model:
    input:
        model=model_input,
        heldout=DATA["heldout"],
    output:
        card=report(
            MODEL_CARD,
            caption="../report/model.rst",
            category="Model",
            subcategory=REPORT_SUBCATEGORY,
        ),
    log:
        f"logs/{PER_MODEL}describe_model.log",
    benchmark:
        benchmark_file(f"{PER_MODEL}describe_model")
    conda:
        CONDA_ENV
    threads: 1
    params:
        # What the config names (a hub id, say) beside what is read (its downloaded folder).
        checkpoint=model_source,
        model=model_spec,
        model_description=model_description,
        image_fit=config["image_fit"],
        device="cpu",
    script:
        "../scripts/describe_model.py"
