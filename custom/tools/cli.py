"""Command-line jobs that are not bundle workflows: ``python -m custom.cli <command> [--flags]``.

Every public function decorated with ``@cli.command`` below is a command of that name; its help
(``python -m custom.cli <command> --help``) is built from its signature and docstring by
:mod:`custom.tools.commands`, and never runs anything. ``python -m custom.cli --help`` lists them.

This is the project's one command-line style. Adding a command is one decorated function here (a benchmark:
in :mod:`custom.tools.benchmark_commands`): its
docstring's summary, ``Args:`` and ``Example:`` are its help; a thin wrapper names the function whose
parameters are its options (``options_from="module:function"``) and imports it when run. The
registry (:mod:`custom.tools.commands`), rather than plain ``fire``, because it checks a command line
before anything is imported or run (an unknown or missing option stops with one line naming it, where
fire hands an unknown option of a ``**options`` wrapper on to the code) and because ``--help`` lists
a wrapper's real options with their defaults and an example (fire shows ``**options``, in a pager);
fire still reads the values.
"""

from __future__ import annotations

import sys

from .commands import TRAIN_OVERRIDES, cli


def _given(**options) -> dict:
    """The options given on the command line (the others keep the implementation's defaults)."""
    return {k: v for k, v in options.items() if v is not None}


@cli.command(options_from="custom.data.synthetic:generate_synthetic")
def synthetic(root: str | None = None, **params):
    """Generate the synthetic chest X-ray set if it is not there yet, and print its data-list path.

    The set is generated once per set of parameters into the cache (~/.cache/nvum/synthetic-<hash>,
    or $NVUM_CACHE_DIR) and reused afterwards (bundle/docs/data.md).

    Args:
        root: the folder to write it to (default: the cache folder of these parameters).
        seed: seed of everything generated (the set is a deterministic function of the parameters).
        num_training: noisy training images.
        num_validation: noisy validation images.
        num_test: clean test images (same style as training).
        num_test_shifted: clean test images of another style and PadChest's prevalences.
        image_size: image height and width in pixels (16-512).
        noise: noise model: report, symmetric:<rate>, bomd[:<ratio>,<p>] or none (bundle/docs/data.md).
        progress: show a progress bar.

    Example:
        python -m custom.cli synthetic --noise symmetric:0.2 --num_training 1500
    """
    from ..data.synthetic import ensure_synthetic

    print(ensure_synthetic(root, **params))


@cli.command(overrides=TRAIN_OVERRIDES)
def check(config_file: str = "bundle/configs/train.json", **overrides) -> None:
    """Pre-flight check of a training config and its data before a long run; exit status 1 when a check fails.

    Checks the config ids, the data list (every problem at once), that every image exists and
    decodes (all bad ones listed with their count), the training positives of each class, that the
    network and loss build, the pretrained weights, the checkpoint to resume from and the output
    folders (bundle/docs/reliability.md). What stops training fails here; what training only warns
    about is a warning here.

    Args:
        config_file: the training config, or a list of config files merged in order (a dataset overlay).

    Example:
        python -m custom.cli check --config_file bundle/configs/train.json --max_epochs 3
    """
    from .preflight import main

    main(config_file, **overrides)


@cli.command()
def build_datalist(dataset: str, scheme: str, metadata: str, output: str, strict: bool = False, quiet: bool = False,
                   split_dir: str | None = None, seed: int | None = None, val_fraction: float | None = None,
                   holdout: str | None = None, match: str | None = None, uncertain: str | None = None,
                   views: str | None = None, tsne_views: str | None = None, dicom_views: str | None = None,
                   image_dirs: bool | None = None, image_prefix: str | None = None, set_id: str | None = None,
                   dataset_dir: str | None = None):
    """Build a data list of a real dataset (NIH, CheXpert, OpenI, PadChest, Google NIH relabel) from its metadata.

    Prints a summary and saves it beside the list (bundle/docs/real_datasets.md). Options left
    unset take the dataset's default.

    Args:
        dataset: nih, chexpert, openi, padchest or nih_google.
        scheme: the class scheme, nih14 or chexpert8.
        metadata: the dataset's metadata table (OpenI: the reports .tgz or XML folder).
        output: the data list to write (.json or .json.gz); the summary goes beside it.
        strict: stop when a source term is not in the dataset's published vocabulary.
        quiet: do not print the summary.
        split_dir: NIH: folder of train_val_list.txt and test_list.txt (default: next to the table).
        seed: seed of the patient-wise split (default 0).
        val_fraction: share of the images in validation when there is no official split.
        holdout: data list(s) whose patients stay out of training (e.g. the Google relabel list).
        match: paper (the paper's substring rules, default) or exact (exact terms only).
        uncertain: CheXpert's uncertain (-1) labels: zeros (default) or ones.
        views: OpenI: a table of image views.
        tsne_views: OpenI: torchxrayvision's t-SNE view table.
        dicom_views: OpenI: torchxrayvision's DICOM metadata table.
        image_dirs: PadChest: image paths <ImageDir>/<ImageID>.
        image_prefix: prefix of every image path.
        set_id: Google relabel: the Set Id to keep (default test).
        dataset_dir: NIH and Google relabel: keep only the images found under this folder (there, in
            images/ or in NIH's images_001/images/ ... images_012/images/), with paths relative to it:
            train with the same --dataset_dir. Prints how many were not found; stops when none is.

    Example:
        python -m custom.cli build_datalist --dataset nih --scheme nih14 \\
            --metadata /data/nih/Data_Entry_2017_v2020.csv --holdout data_lists/nih_google_nih14.json.gz \\
            --dataset_dir /data/nih --output lists/nih_nih14.json.gz
    """
    from .datalists import BuildError, build_datalist as build

    options = _given(split_dir=split_dir, seed=seed, val_fraction=val_fraction, holdout=holdout, match=match,
                     uncertain=uncertain, views=views, tsne_views=tsne_views, dicom_views=dicom_views,
                     image_dirs=image_dirs, image_prefix=image_prefix, set_id=set_id, dataset_dir=dataset_dir)
    try:
        build(dataset, scheme, metadata, output, strict=strict, quiet=quiet, **options)
    except (BuildError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"build_datalist: {e}") from None


@cli.command(options_from="custom.tools.audit.audit:audit")
def audit(checkpoint: str, **options):
    """Rank every (training image, class) label of a training run by how likely it is wrong (NVUM memory).

    The data list, its dataset_dir, the input size, the network and the memory settings are read
    from the checkpoint's run record, so the checkpoint and an output file are all it needs
    (bundle/docs/audit.md).

    Args:
        checkpoint: resume checkpoint of a training run (bundle/models/checkpoint_epoch=K.pt, not model.pt).
        datalist: data list to audit (default: the one the run trained on, from its record).
        output: ranked CSV, one row per (image, class), most suspicious first.
        summary: per-class CSV (default: <output stem>_by_class.csv).
        dataset_dir: folder of the data list's images (default: the run's).
        model_weight: weight w of the final network's logits in the score's belief (1 - w) m + w z; 0: memory only.
        batch_size: images per batch of the prediction pass over the training images.
        device: device of the prediction pass (cpu, cuda).
        ks: cut-offs of precision at k (comma-separated).
        quiet: print nothing.

    Example:
        python -m custom.cli audit --checkpoint "bundle/models/checkpoint_epoch=6.pt" --output results/audit.csv
    """
    from .audit import audit as run_audit

    run_audit(checkpoint, **options)


@cli.command(options_from="custom.tools.deploy:export_command")
def export(**options):
    """TorchScript model.ts and the deployable bundle zip from a checkpoint, checked offline; no MLflow.

    Classes, input size and network come from the run record beside the checkpoint (model.json)
    (bundle/docs/deploy.md).

    Args:
        checkpoint: the trained weights.
        models_dir: where model.ts and the zip are written (default: the checkpoint's folder).
        bundle_dir: the source bundle folder (default: the repository's bundle/).
        classes: class names, for weights without a run record (comma-separated).
        image_size: input size, for weights without a run record.
        name: folder name inside the zip.
        weights_url: where model.pt and model.ts will be published (the urls of large_files.yml; default: empty).

    Example:
        python -m custom.cli export --checkpoint bundle/models/model.pt
    """
    from .deploy import export_command

    export_command(**options)


@cli.command(options_from="custom.tools.deploy:register_command")
def register(**options):
    """Export a checkpoint, log the bundle and the pyfunc model to MLflow in a new run, and register it.

    For checkpoints trained with --mlflow false (bundle/docs/deploy.md).

    Args:
        checkpoint: the trained weights.
        registered_model_name: the name in the MLflow registry.
        tracking_uri: the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///bundle/eval/mlruns.db).
        experiment_name: the MLflow experiment of the new run.
        models_dir: where model.ts and the zip are written (default: the checkpoint's folder).
        bundle_dir: the source bundle folder (default: the repository's bundle/).
        classes: class names, for weights without a run record (comma-separated).
        image_size: input size, for weights without a run record.
        example_images: image files for the model's input example (comma-separated).
        name: folder name inside the zip.

    Example:
        python -m custom.cli register --checkpoint bundle/models/model.pt --registered_model_name nvum-chestxray
    """
    from .deploy import register_command

    register_command(**options)


@cli.command(options_from="custom.tools.loadtest:load_test")
def load_test(**options):
    """Load-test a model served on this machine: requests per second, p50/p99 latency and errors.

    Sends the requests from concurrent client threads to a loopback address only, and stops after
    the time limit (bundle/docs/deploy.md).

    Args:
        url: the scoring endpoint of `mlflow models serve ... -h 127.0.0.1` (a loopback address only).
        requests: how many requests to send.
        clients: concurrent clients (threads).
        images: images per request.
        max_errors: failed requests allowed before the command exits with status 1 (default 0).

    Example:
        python -m custom.cli load_test --url http://127.0.0.1:5001/invocations --requests 200 --clients 4 --images 8
    """
    from .loadtest import LoadTestFailed
    from .loadtest import load_test as run

    options.setdefault("max_errors", 0)
    try:
        run(**options)
    except (ValueError, LoadTestFailed) as e:
        sys.exit(f"load_test: {e}")


@cli.command()
def docs(tests: bool = True):
    """Rewrite what is generated: common.json's objects in train.json and inference.json, and the figures of the
    pages from the result files (benchmark runs, metadata, test count).

    Args:
        tests: also restate the number of tests (a pytest collection, about half a minute).

    Example:
        python -m custom.cli docs
    """
    from ..config import sync_shared
    from ..flags import as_bool
    from .pages import refresh
    from .training import CONFIG_DIR

    changed = [f"bundle/configs/{name}" for name in sync_shared(CONFIG_DIR)] + refresh(tests=as_bool(tests, "tests"))
    print("rewrote " + ", ".join(changed) if changed else "every generated block is up to date")


@cli.command(options_from="custom.tools.monailabel:check")
def monailabel(**options):
    """Serve the deployable bundle with a real MONAI Label server and compare its answers with inference.json.

    MONAI Label runs in its own environment (custom/tools/monailabel_requirements.txt; --install true
    builds it); prints the largest probability difference and the time of each step (bundle/docs/deploy.md).

    Example:
        python -m custom.cli monailabel --bundle_zip bundle/models/nvum_cxr_classification.zip --images /path/to/images
    """
    from .monailabel import check as run

    run(**options)


@cli.command(options_from="custom.tools.prepare:prepare")
def prepare(**options):
    """Decode every image of a data list once into a prepared store (8-bit, one channel, memory-mapped).

    Writes the store and a data list pointing into it (labels, patients and splits kept); train and
    evaluate with --datalist <output>/datalist.json (bundle/docs/scaling.md). Resumes an interrupted run.

    Args:
        datalist: the data list whose images are prepared (.json or .json.gz).
        image_size: the training input size the images are stored at.
        output: the store's folder.
        dataset_dir: folder the list's image paths are relative to (default: the list's folder).
        workers: decoding processes (default: the CPU count, at most 8; 0: in this process).
        chunk: images per task of a worker.
        progress: show a progress bar.

    Example:
        python -m custom.cli prepare --datalist lists/nih_nih14.json.gz --dataset_dir /data/nih \\
            --image_size 512 --output /data/nih_store_512
    """
    from ..data.store import StoreError
    from .prepare import prepare as run

    try:
        run(**options)
    except (StoreError, ValueError, FileNotFoundError) as e:
        sys.exit(f"prepare: {e}")


@cli.command(options_from="custom.tools.monaideploy:check")
def monaideploy(**options):
    """Run the deployable bundle's MONAI Deploy application and compare its answers with inference.json.

    The MONAI Deploy App SDK runs in its own environment (custom/tools/monaideploy_requirements.txt;
    --install true builds it); prints the largest probability difference per folder (bundle/docs/deploy.md).

    Args:
        bundle_zip: the deployable bundle zip.
        images: a folder of PNG or DICOM images, or a list of folders ("[png_dir, dcm_dir]").
        work: scratch folder (default: a new temporary folder).
        venv: the MONAI Deploy App SDK's environment.
        install: build the environment first when it is not there.

    Example:
        python -m custom.cli monaideploy --bundle_zip bundle/models/nvum_cxr_classification.zip --images "[pngs,dicoms]"
    """
    from .monaideploy import check as run

    run(**options)


@cli.command(options_from="custom.data.synthetic.stats:write_label_stats")
def synthetic_stats(**options):
    """Derive the synthetic set's label statistics from the NIH (and PadChest) metadata tables.

    The result is committed as custom/data/synthetic/nih_label_stats.json; the generator and the
    tests read that file, never the tables.

    Example:
        python -m custom.cli synthetic_stats --nih_csv Data_Entry_2017_v2020.csv --output nih_label_stats.json
    """
    from ..data.synthetic.stats import write_label_stats

    write_label_stats(**options)


@cli.command(options_from="custom.tools.ood:fit_ood")
def fit_ood(**options):
    """Refit the out-of-distribution gate of a trained model on local images (bundle/docs/ood.md).

    Training writes the gate beside model.pt (model.ood.npz); this replaces it, e.g. with images of your
    hospital, so that they are accepted and images unlike them refused.

    Args:
        checkpoint: the trained weights (model.pt with its run record model.json).
        datalist: data list: training split fitted, validation split sets the threshold (default: the run's).
        dataset_dir: folder of the data list's images.
        images: a folder of local chest X-rays instead (80% fitted, 20% set the threshold).
        share: share of the threshold images accepted.
        batch_size: images per forward pass.
        device: cpu or cuda.
        seed: seed of the 80/20 split of --images.

    Example:
        python -m custom.cli fit_ood --checkpoint bundle/models/model.pt --images /data/our_cxr
    """
    from .ood import fit_ood as run

    run(**options)



@cli.command(options_from="custom.tools.servemem:measure")
def serve_memory(**options):
    """The memory of a served model: idle, after a refused request of about 300 MB and after 1,000 large rows.

    Starts `mlflow models serve` on a free loopback port (MLFLOW_TRACKING_URI must name the model's store),
    prints the resident memory of all the server's processes as JSON, and stops the server (bundle/docs/deploy.md).

    Args:
        model: the model URI, e.g. models:/nvum-chestxray/1.
        workers: server worker processes.
        env: more environment variables of the server, a dict.
        refused_mb: size of the refused request, MB of base64 text.
        rows: rows of large random PNGs sent after it.
        size: the side of those PNGs, pixels.
        per_request: rows per request.
        timeout: seconds to wait for the server to answer.

    Example:
        python -m custom.cli serve_memory --model models:/nvum-chestxray/1 --workers 1
    """
    import json

    from .servemem import measure

    print(json.dumps(measure(**options)))

from . import benchmark_commands  # noqa: E402, F401  (registers the benchmark commands, listed after these)


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m custom.cli`` with ``argv`` (default: the process's arguments)."""
    status = cli.main(argv)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    from ..console import install_excepthook

    install_excepthook(force=True)
    main()
