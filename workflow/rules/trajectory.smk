# A model followed through its training: every checkpoint of a run measured on the same held-out
# digits with the same t and noise, and what changed between them (trajectory.py). The run is
# trajectory.checkpoints, or else the train rule's snapshots (checkpoint: train).


if TRAJECTORY is not None:

    # trajectory.jobs jobs, each following consecutive checkpoints (side by side on a cluster).
    rule trajectory_part:
        input:
            checkpoints=TRAJECTORY["inputs"],
            heldout=DATA["heldout"],
        output:
            "results/trajectory/parts/{part}.pt",
        log:
            "logs/trajectory/part-{part}.log",
        benchmark:
            benchmark_file("trajectory_part-{part}")
        wildcard_constraints:
            part=r"\d+",
        conda:
            CONDA_ENV
        threads: config["threads"]
        resources:
            gpu=1,
        params:
            checkpoints=TRAJECTORY["checkpoints"],
            settings=config["trajectory"],
            buckets=config["timestep_loss"]["buckets"],
            image_fit=config["image_fit"],
            sampling=SAMPLING,
            device=config["device"],
        script:
            "../scripts/trajectory_part.py"

    rule trajectory:
        input:
            parts=expand(
                "results/trajectory/parts/{part}.pt",
                part=range(config["trajectory"]["jobs"]),
            ),
        output:
            csv=report(
                "results/trajectory/trajectory.csv",
                caption="../report/trajectory_csv.rst",
                category="Training",
            ),
            bound_csv="results/trajectory/bound.csv",
            heatmap=report(
                "results/trajectory/heatmap.png",
                caption="../report/trajectory_heatmap.rst",
                category="Training",
            ),
            bound=report(
                "results/trajectory/bound.png",
                caption="../report/trajectory_bound.rst",
                category="Training",
            ),
            samples=report(
                "results/trajectory/samples.png",
                caption="../report/trajectory_samples.rst",
                category="Training",
            ),
            findings=report(
                "results/trajectory/findings.json",
                caption="../report/trajectory_findings.rst",
                category="Training",
            ),
        log:
            "logs/trajectory.log",
        benchmark:
            benchmark_file("trajectory")
        conda:
            CONDA_ENV
        params:
            image_fit=config["image_fit"],
        script:
            "../scripts/trajectory.py"
