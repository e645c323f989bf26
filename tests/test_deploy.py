"""Deployment: TorchScript export, the bundle zip, the MLflow model (registry, pyfunc, serving),
and the MONAI Label and MONAI Deploy sides of the contract."""

import base64
import importlib.util
import io
import json
import os
import posixpath
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import CONFIGS, ROOT, TINY_RUN

pytestmark = pytest.mark.slow  # trains a bundle, starts a model server and subprocesses

TINY = {
    "datalist#num_training": 96,
    "datalist#num_validation": 64,
    "datalist#num_test": 96,
    "datalist#num_test_shifted": 64,
    "max_epochs": 1,
    "batch_size": 32,
}
MODEL_NAME = "nvum-test"
TOL = 1e-5
CLASSES = json.loads((CONFIGS / "common.json").read_text())["classes"]


def _workflow(config_file, workflow_type, **override):
    return ConfigWorkflow(config_file=str(CONFIGS / config_file), meta_file=str(CONFIGS / "metadata.json"),
                          logging_file=str(CONFIGS / "logging.conf"), workflow_type=workflow_type, **override)


def _run(wf):
    wf.initialize()
    wf.run()
    wf.finalize()


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"nvum_bundle_{name}", ROOT / "bundle" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny training run with MLflow on (it ends by exporting and registering the model), and
    ``inference.json``'s probabilities for six test images of it."""
    root = tmp_path_factory.mktemp("bundle")
    data = tmp_path_factory.mktemp("data") / "synthetic"
    with pytest.MonkeyPatch.context() as mp:  # conftest's per-test isolation starts after module fixtures
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # e.g. left by mlflow.set_tracking_uri in another test
        _run(_workflow("train.json", "train", bundle_root=str(root), registered_model_name=MODEL_NAME,
                       **{"datalist#root": str(data)}, **TINY))
    images = tmp_path_factory.mktemp("images")
    for p in sorted((data / "test").glob("*.png"))[:6]:
        (images / p.name).write_bytes(p.read_bytes())
    csv = root / "inference" / "reference.csv"
    _run(_workflow("inference.json", "infer", bundle_root=str(root), input_path=str(images), output_file=str(csv)))
    table = pd.read_csv(csv)
    table.index = [Path(p).name for p in table.pop("image")]
    return {"root": root, "data": data, "images": images, "probs": table,
            "uri": f"sqlite:///{(root / 'eval' / 'mlruns.db').resolve()}"}


def _image_files(deployed):
    return [deployed["images"] / name for name in deployed["probs"].index]


def test_training_registers_a_pyfunc_model_that_predicts_as_inference_json(deployed):
    from custom.deploy.registry import use_tracking_uri

    client = mlflow.MlflowClient(tracking_uri=deployed["uri"])
    (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["loss"] == "nvum"  # the training run itself
    assert "bundle/nvum_cxr_classification.zip" in {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert "test/test_test.csv" in {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    with zipfile.ZipFile(deployed["root"] / "models" / "nvum_cxr_classification.zip") as zf:  # this model's test AUCs
        metrics = json.loads(zf.read("nvum_cxr_classification/configs/metadata.json"))["eval_metrics"]
    assert set(metrics) == {"mean_auc_diseases_test", "mean_auc_diseases_test_shifted"}
    assert metrics["mean_auc_diseases_test"] == round(run.data.metrics["test_test_mean_auc"], 4)

    with use_tracking_uri(deployed["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version.version}")
    inputs = model.metadata.get_input_schema().to_dict()
    assert inputs == [{"type": "string", "name": "image", "required": True}]  # base64 text, decoded by the model
    positive = [f"{c}_positive" for c in CLASSES]  # the decisions at the run's operating thresholds
    outputs = model.metadata.get_output_schema()  # then, only when a row is degenerate, inference's warning
    assert outputs.input_names() == CLASSES + positive + ["input_warning"]
    assert [c.required for c in outputs.inputs][-1:] == [False] and all(c.required for c in outputs.inputs[:-1])
    assert model.metadata.saved_input_example_info is not None

    files = _image_files(deployed)
    pred = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in files]}))
    assert list(pred.columns) == CLASSES + positive and len(pred) == len(files)
    assert np.abs(pred[CLASSES].to_numpy() - deployed["probs"].to_numpy()).max() < TOL
    thresholds = json.loads((deployed["root"] / "models" / "model.json").read_text())["thresholds"]
    for c in CLASSES:
        assert (pred[f"{c}_positive"] == (pred[c] >= thresholds[c]).astype(int)).all(), c
    # an in-memory array (sent as .npy bytes) gives the same probabilities as its PNG file
    from custom.serving.pyfunc import decode_image, encode_array

    as_array = model.predict(pd.DataFrame({"image": [encode_array(decode_image(files[0].read_bytes())[0])]}))
    assert np.abs(as_array[CLASSES].to_numpy() - pred[CLASSES].to_numpy()[:1]).max() < TOL


def _extract(zip_path, dest):
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        zf.extractall(dest)
    return names


def test_bundle_zip_runs_inference_json_from_inside_its_folder_with_either_model_file(deployed, tmp_path):
    names = _extract(deployed["root"] / "models" / "nvum_cxr_classification.zip", tmp_path)
    top = "nvum_cxr_classification/"
    for f in ("LICENSE", "large_files.yml", "configs/metadata.json", "configs/inference.json", "configs/train.json",
              "configs/evaluate.json", "configs/multi_gpu_train.json", "configs/logging.conf",
              "configs/datasets/nih.json", "models/model.pt", "models/model.json", "models/model.ts",
              "models/model.ood.npz", "docs/README.md", "docs/data_license.txt", "custom/__init__.py",
              "custom/nvum/memory.py", "custom/serving/pyfunc.py",
              "scripts/deploy_app.py", "scripts/monailabel_app/main.py"):
        assert top + f in names, f
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(top + "custom/tools/") or n == top + "custom/cli.py" for n in names)  # runtime only
    bundle = tmp_path / "nvum_cxr_classification"
    # the operating thresholds travel in the run record and in inference.json, which inference reads
    thresholds = json.loads((deployed["root"] / "models" / "model.json").read_text())["thresholds"]
    assert set(thresholds) == set(CLASSES) and all(0 <= v <= 1 for v in thresholds.values())
    assert json.loads((bundle / "models" / "model.json").read_text())["thresholds"] == thresholds
    assert json.loads((bundle / "configs" / "inference.json").read_text())["thresholds"] == thresholds
    for config in ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "datasets/nih.json"):
        text = (bundle / "configs" / config).read_text()
        assert "common.json" not in text and "custom.tools" not in text, config  # includes written in; no tool named
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util, custom; print(custom.__file__, importlib.util.find_spec('custom.tools'))"
    found = subprocess.run([sys.executable, "-c", probe], cwd=bundle, env=env, capture_output=True, text=True,
                           timeout=120)
    assert found.returncode == 0 and found.stdout.split() == [str(bundle / "custom" / "__init__.py"),
                                                              "None"], found.stderr[-2000:]
    for removed in ((), ("model.pt", "model.json")):  # the weights first, then the TorchScript model alone
        for name in removed:
            (bundle / "models" / name).unlink()
        out = tmp_path / f"probs{len(removed)}.csv"
        # no --bundle_root: the deployable configs default to the folder they are run from, as model-zoo cards do
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--input_path", str(deployed["images"]), "--output_file", str(out)]
        proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = pd.read_csv(out)
        assert [Path(p).name for p in table["image"]] == list(deployed["probs"].index)
        assert np.abs(table.iloc[:, 1:].to_numpy() - deployed["probs"].to_numpy()).max() < TOL
        decisions = pd.read_csv(out.with_name("decisions.csv"))
        assert list(decisions.columns) == list(table.columns)
        for c in CLASSES:
            assert (decisions[c] == (table[c] >= thresholds[c]).astype(int)).all(), c


def _relative_links(markdown: str) -> list[str]:
    """The relative link targets of a Markdown page (code blocks and spans left out, fragments dropped)."""
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL))
    targets = re.findall(r"\]\(([^)\s]+)[^)]*\)", text) + re.findall(r'src="([^"]+)"', text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_every_relative_link_of_the_zips_pages_resolves_inside_the_zip(deployed):
    top = "nvum_cxr_classification/"
    with zipfile.ZipFile(deployed["root"] / "models" / "nvum_cxr_classification.zip") as zf:
        names = set(zf.namelist())
        pages = sorted(n for n in names if n.startswith(top + "docs/") and n.endswith(".md"))
        broken, linked = [], set()
        for page in pages:
            for link in _relative_links(zf.read(page).decode()):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(page), link))
                linked.add(target)
                if target not in names:
                    broken.append(f"{page}: {link}")
    assert top + "docs/results.md" in pages and top + "docs/noise_benchmark/results.md" in pages
    assert not broken, broken
    assert {top + "docs/figures/audit_scores.png", top + "docs/noise_benchmark/curve_report_cpu.png"} <= linked
    assert not any(n.startswith(top + "docs/noise_benchmark/runs/") for n in names)  # no page links the run records


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, payload, timeout=60):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_served_model_answers_a_scoring_request_and_leaves_no_process(deployed, tmp_path):
    pytest.importorskip("uvicorn", reason="mlflow's scoring server needs uvicorn")
    pytest.importorskip("fastapi", reason="mlflow's scoring server needs fastapi")
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    if not mlflow_cli.is_file():
        pytest.skip(f"mlflow command not found next to {sys.executable}")
    from PIL import Image

    port = _free_port()
    files = _image_files(deployed)[:2]
    with Image.open(files[0]) as im:
        pixels = im.width * im.height
    env = dict(os.environ, MLFLOW_TRACKING_URI=deployed["uri"], NVUM_MAX_REQUEST_PIXELS=str(3 * pixels),
               NVUM_MAX_REQUEST_BYTES=str(64 * 2**20),
               PATH=f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    log = open(tmp_path / "serve.log", "w")
    cmd = [str(mlflow_cli), "models", "serve", "-m", f"models:/{MODEL_NAME}/1", "--env-manager", "local", "-h",
           "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = os.getpgid(server.pid)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the model server did not get ready in 180 s"
            time.sleep(0.5)
        rows = [[base64.b64encode(p.read_bytes()).decode()] for p in files]
        answer = _post(f"http://127.0.0.1:{port}/invocations",
                       {"dataframe_split": {"columns": ["image"], "data": rows}})
        pred = pd.DataFrame(answer["predictions"])
        assert list(pred.columns) == CLASSES + [f"{c}_positive" for c in CLASSES]
        assert np.abs(pred[CLASSES].to_numpy() - deployed["probs"].to_numpy()[:2]).max() < TOL
        # bad requests: HTTP 400 whose top-level message names the row and the reason (a file path is never read)
        from custom.serving.pyfunc import encode_array

        nan = base64.b64encode(encode_array(np.full((8, 8), np.nan, np.float32))).decode()
        header = io.BytesIO()  # a .npy header of a 20000 x 20000 array, no pixels: refused from the header
        np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": (20000, 20000)})
        huge = base64.b64encode(header.getvalue()).decode()
        for row, expected in (([str(files[0])], "row 0: expected the image's bytes (PNG, JPEG, DICOM or .npy), base64"),
                              ([base64.b64encode(b"not an image").decode()], "row 0: not a readable PNG/JPEG image"),
                              ([nan], "row 0: the pixel array holds 64 NaN or infinite value(s)"),
                              ([huge], "row 0: the .npy array has 400000000 pixels (20000 x 20000), over the limit")):
            with pytest.raises(urllib.error.HTTPError) as err:
                _post(f"http://127.0.0.1:{port}/invocations",
                      {"dataframe_split": {"columns": ["image"], "data": [rows[0], row]}})
            body = json.loads(err.value.read())
            assert err.value.code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
            assert expected.replace("row 0", "row 1") in body["message"], body["message"][-500:]
        with pytest.raises(urllib.error.HTTPError) as err:  # over the row limit: refused before decoding
            _post(f"http://127.0.0.1:{port}/invocations",
                  {"dataframe_split": {"columns": ["image"], "data": [rows[0]] * 257}})
        body = json.loads(err.value.read())
        assert err.value.code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
        assert "the request has 257 rows, over the limit of 256 rows per request ($NVUM_MAX_ROWS" in body["message"]
        with pytest.raises(urllib.error.HTTPError) as err:  # over the server's pixel budget: refused from the headers
            _post(f"http://127.0.0.1:{port}/invocations",
                  {"dataframe_split": {"columns": ["image"], "data": [rows[0]] * 4}})
        body = json.loads(err.value.read())
        assert err.value.code == 400 and (f"have {4 * pixels} pixels in all, over the limit of {3 * pixels} pixels per "
                                          "request (row 3 takes the total over it; $NVUM_MAX_REQUEST_PIXELS") \
            in body["message"], body
        # a 1 x 1 image: inference's default policy (scored, with its warning), or refused with the parameter
        tiny = io.BytesIO()
        Image.new("L", (1, 1)).save(tiny, format="PNG")
        request = {"dataframe_split": {"columns": ["image"], "data": [rows[0], [base64.b64encode(tiny.getvalue())
                                                                               .decode()]]}}
        # scored, then refused by the out-of-distribution gate that training fitted (as inference does), unless the
        # client asks for the gate's column; then the warning and the verdict stand side by side
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"http://127.0.0.1:{port}/invocations", request)
        assert err.value.code == 400 and "row 1: not like the training images: distance " in json.loads(
            err.value.read())["message"]
        pred = pd.DataFrame(_post(f"http://127.0.0.1:{port}/invocations", {**request, "params": {"ood": "flag"}})[
            "predictions"])
        assert pred["input_warning"].tolist()[0] == "" and pred[CLASSES].iloc[0].notna().all()
        assert pred["input_warning"].tolist()[1].startswith("degenerate image, scored all the same: 1 x 1 pixels, a "
                                                            "side under 1/4 of the network's")
        assert pred["in_distribution"].tolist() == [1, 0] and pred[CLASSES].iloc[1].isna().all()
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"http://127.0.0.1:{port}/invocations", {**request, "params": {"degenerate_images": "refuse"}})
        body = json.loads(err.value.read())
        assert err.value.code == 400 and ("row 1: degenerate image, not scored (degenerate_images='refuse'): 1 x 1 "
                                          "pixels") in body["message"], body
        # the memory of a refused 200 MB request goes back to the system (pandas keeps the column in pyarrow memory)
        from custom.tools.servemem import group_rss

        idle = group_rss(pgid)
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"http://127.0.0.1:{port}/invocations",
                  {"dataframe_split": {"columns": ["image"], "data": [["A" * 2**22]] * 50}})
        assert err.value.code == 400 and "over the limit of 67108864 bytes" in json.loads(err.value.read())["message"]
        deadline = time.monotonic() + 15
        while group_rss(pgid) > 1.2 * idle:
            assert time.monotonic() < deadline, f"the server holds {group_rss(pgid) >> 20} MB, idle {idle >> 20} MB"
            time.sleep(0.5)
    finally:
        try:
            os.killpg(pgid, signal.SIGTERM)
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()
    deadline = time.monotonic() + 10
    while True:  # every process of the server's group is gone (workers included)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, f"processes of group {pgid} are still running"
        time.sleep(0.2)


def test_monai_label_style_loading_runs_inference_json_on_one_image(deployed, tmp_path):
    """What MONAI Label's BundleInferTask does with a bundle folder: ConfigParser on
    configs/inference.json with ``bundle_root`` and ``device`` overridden, ``network_def`` plus
    models/model.pt (or models/model.ts alone), labels from the metadata's first output,
    ``preprocessing`` -> network(image[None])[0] -> ``postprocessing``."""
    _extract(deployed["root"] / "models" / "nvum_cxr_classification.zip", tmp_path)
    packed = tmp_path / "nvum_cxr_classification"
    image = _image_files(deployed)[0]
    expected = deployed["probs"].loc[image.name].to_numpy()
    for bundle_path, configs in ((packed, packed / "configs"), (deployed["root"], CONFIGS)):
        parser = ConfigParser()
        parser.read_config(str(configs / "inference.json"))
        parser.config.update({"bundle_root": str(bundle_path), "device": "cpu"})
        metadata = json.loads((configs / "metadata.json").read_text())
        key_image, _ = next(iter(metadata["network_data_format"]["inputs"].items()))
        key_pred, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
        labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
        assert (key_image, key_pred) == ("image", "pred") and labels == {c.lower(): i for i, c in enumerate(CLASSES)}
        if (bundle_path / "models" / "model.pt").exists():
            network = parser.get_parsed_content("network_def", instantiate=True)
            checkpoint = torch.load(bundle_path / "models" / "model.pt", map_location="cpu")
            network.load_state_dict(checkpoint.get("model", checkpoint), strict=True)
        else:
            network = torch.jit.load(str(bundle_path / "models" / "model.ts"), map_location="cpu")
        network.eval()
        data = {key_image: str(image)}
        for t in parser.get_parsed_content("preprocessing", instantiate=True).transforms:
            data = t(data)
        with torch.no_grad(), torch.jit.optimized_execution(False):
            data[key_pred] = parser.get_parsed_content("inferer")(data[key_image][None], network)[0]
        for t in parser.get_parsed_content("postprocessing", instantiate=True).transforms:
            data = t(data)
        assert data[key_pred].shape == (len(CLASSES),)
        assert np.abs(np.asarray(data[key_pred]) - expected).max() < TOL, bundle_path
    assert "classification" in packed.name  # BundleInferTask's default task type comes from the folder name


def test_torchscript_export_matches_the_checkpoint_and_runs_as_the_deploy_operator_runs_it(deployed):
    """model.ts against model.pt on a batch of images; then the MONAI Deploy side without the SDK:
    the SDK's bundle operator reads metadata and inference config from model.ts, drops the
    config's image loader and runs preprocessing -> network -> postprocessing; the example app
    adds its PNG loader and multi-label output handling."""
    from monai.data import MetaTensor
    from monai.networks.nets import DenseNet121

    from custom.networks import load_weights

    io = _load_script("deploy_io")
    model_ts = deployed["root"] / "models" / "model.ts"
    with zipfile.ZipFile(model_ts) as archive:  # the files the SDK's get_bundle_config reads
        meta = json.loads(archive.read("model/extra/metadata.json"))
        inference = json.loads(archive.read("model/extra/inference.json"))
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channel_def == {str(i): c for i, c in enumerate(CLASSES)} and inference["classes"] == CLASSES
    parser = ConfigParser()
    parser.read_config(inference)
    pre = parser.get_parsed_content("preprocessing")
    pre.transforms = tuple(t for t in pre.transforms if not any(d in type(t).__name__ for d in ("LoadImage",
                                                                                                "SaveImage")))
    post = parser.get_parsed_content("postprocessing")
    paths = io.list_images(deployed["images"])
    batch = []
    for path in paths:
        array, image_meta = io.load_image(path)
        batch.append(pre({"image": MetaTensor(torch.as_tensor(array), meta=image_meta)})["image"])
    batch = torch.stack(batch)
    scripted = torch.jit.load(str(model_ts), map_location="cpu").eval()
    eager = load_weights(DenseNet121(spatial_dims=2, in_channels=3, out_channels=len(CLASSES)),
                         deployed["root"] / "models" / "model.pt").eval()
    with torch.no_grad(), torch.jit.optimized_execution(False):  # skips slow JIT passes; same outputs
        logits, reference = scripted(batch), eager(batch)
    assert logits.shape == (len(paths), len(CLASSES)) and (logits - reference).abs().max() < TOL
    results = {p.name: io.format_probabilities(post({"pred": z})["pred"], channel_def) for p, z in zip(paths, logits)}
    table = pd.DataFrame.from_dict(results, orient="index")
    assert list(table.columns) == CLASSES and list(table.index) == list(deployed["probs"].index)
    assert np.abs(table.to_numpy() - deployed["probs"].to_numpy()).max() < TOL




def test_inference_network_reads_the_first_model_file_that_exists_on_first_use(deployed, tmp_path):
    from monai.networks.nets import DenseNet121

    from custom.serving.loaders import BundleNetwork

    candidates = [tmp_path / "model.pt", tmp_path / "model.ts"]
    net = BundleNetwork(DenseNet121(spatial_dims=2, in_channels=3, out_channels=len(CLASSES)), candidates)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(FileNotFoundError) as err:  # nothing is read before the first forward pass
        net(x)
    assert str(candidates[0]) in str(err.value) and str(candidates[1]) in str(err.value)
    candidates[1].write_bytes((deployed["root"] / "models" / "model.ts").read_bytes())
    net.load()
    assert net.model_file == candidates[1] and isinstance(net.network.module, torch.jit.ScriptModule)


def test_register_command_logs_a_new_run_and_a_new_version(deployed, tmp_path):
    from custom.deploy.registry import use_tracking_uri
    from custom.tools.deploy import register_command

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    version = register_command(str(deployed["root"] / "models" / "model.pt"), registered_model_name="nvum-cli",
                               tracking_uri=uri, models_dir=str(tmp_path / "models"))
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and str(version.version) == "1"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts next to the store, as in training
    assert "bundle/nvum_cxr_classification.zip" in {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    with use_tracking_uri(uri):
        info = mlflow.models.get_model_info(f"models:/nvum-cli/{version.version}")
    positive = [f"{c}_positive" for c in CLASSES]  # the thresholds of models/model.json came along
    assert info.signature.outputs.input_names() == CLASSES + positive + ["input_warning"]
    assert info.saved_input_example_info is not None


def test_with_an_ema_teacher_the_checkpoint_export_and_served_model_are_the_teacher(tmp_path):
    """NVUM with an EMA teacher (half-life one epoch): models/model.pt holds the teacher's weights, not
    the student's; so does the TorchScript export; inference.json (model.pt) and the pyfunc served model
    (model.ts) give the teacher's probabilities. One tiny epoch: the selected network is the final teacher."""
    from types import SimpleNamespace

    from custom.deploy.export import build_bundle
    from custom.serving.pyfunc import ChestXrayClassifier
    from custom.tools.training import train_through_bundle

    data, root = tmp_path / "data", tmp_path / "run"
    teacher_run = {"nvum#loss": "nvum", "nvum#use_teacher": True, "nvum#teacher_halflife_epochs": 1.0}
    run = train_through_bundle({"datalist#root": str(data), **TINY_RUN, **teacher_run}, bundle_root=root,
                               quiet=True, resume_checkpoints=False)
    teacher = run.parser.get_parsed_content("teacher")
    student = run.parser.get_parsed_content("network")
    assert teacher.model is not None and teacher.decay == pytest.approx(0.5 ** (1 / 2))  # 64 images, batch 32
    teacher_state = {k: v.detach().clone() for k, v in teacher.model.state_dict().items()}
    student_state = student.state_dict()
    # the student has moved away from the teacher, so a checkpoint of the student would not pass below
    assert any(not torch.equal(student_state[k], v) for k, v in teacher_state.items() if v.is_floating_point())

    best = torch.load(root / "models" / "model.pt", weights_only=True)
    assert best.keys() == teacher_state.keys()
    assert all(torch.equal(best[k], v) for k, v in teacher_state.items())

    built = build_bundle(root / "models" / "model.pt", tmp_path / "out", tmp_path / "staging")
    scripted = torch.jit.load(str(built.model_ts), map_location="cpu").eval()
    scripted_state = scripted.state_dict()
    assert scripted_state.keys() == teacher_state.keys()
    assert all(torch.equal(scripted_state[k], v) for k, v in teacher_state.items())

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((data / "test").glob("*.png"))[:4]:
        (images / p.name).write_bytes(p.read_bytes())
    files = sorted(images.glob("*.png"))
    pre = ConfigParser()
    pre.read_config(str(built.config_dir / "inference.json"))
    x = torch.stack([torch.as_tensor(pre.get_parsed_content("preprocessing")({"image": str(p)})["image"])
                     for p in files]).float()
    with torch.no_grad():
        expected = torch.sigmoid(teacher.model.eval()(x)).numpy()
        from_student = torch.sigmoid(student.eval()(x)).numpy()
    assert np.abs(expected - from_student).max() > 1e-3  # the outputs tell teacher and student apart

    csv = tmp_path / "probs.csv"  # inference.json on the training folder: reads models/model.pt
    _run(_workflow("inference.json", "infer", bundle_root=str(root), input_path=str(images), output_file=str(csv)))
    table = pd.read_csv(csv)
    table.index = [Path(p).name for p in table.pop("image")]
    assert np.abs(table.loc[[p.name for p in files], CLASSES].to_numpy() - expected).max() < TOL

    served = ChestXrayClassifier()  # what the MLflow model server loads: model.ts and the bundle's inference.json
    served.load_context(SimpleNamespace(artifacts={"model": str(built.model_ts),
                                                   "inference_config": str(built.config_dir / "inference.json")}))
    pred = served.predict(None, pd.DataFrame({"image": [p.read_bytes() for p in files]}))
    assert np.abs(pred[CLASSES].to_numpy() - expected).max() < TOL
