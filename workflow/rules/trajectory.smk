# A model followed through its training: every checkpoint of a run measured on the same held-out
# digits with the same t and noise, and what changed between them (trajectory.py). The run is
# trajectory.checkpoints, or else the train rule's snapshots (checkpoint: train).


if TRAJECTORY is not None:

    rule trajectory:
        input:
            checkpoints=TRAJECTORY["inputs"],
            heldout=DATA["heldout"],
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
            "../scripts/trajectory.py"
