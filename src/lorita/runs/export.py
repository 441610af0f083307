"""``lorita export``: export the model of a lorita folder (compressed or trained) to ONNX,
checked with onnxruntime (:func:`lorita.export.export_onnx`); with ``--int8`` also a static int8
file calibrated on the run's training images (:func:`lorita.export.export_int8`), with its bytes
on disk and validation accuracy next to the fp32 file's."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lorita import io
from lorita._files import file_bytes, write_json
from lorita.data import DataSplits
from lorita.export import export_int8, export_onnx
from lorita.export_int8 import onnx_session
from lorita.runs.compress import compress
from lorita.runs.config import TrainConfig
from lorita.runs.folder import RunFolder, load_data, load_run

__all__ = ["export_dir", "export_int8_dir", "int8_paths"]


def _model_from_compressed(folder: Path, form: str) -> tuple[nn.Module, tuple[int, ...]]:
    """``(model, input shape)`` of a compressed folder's ``low_rank`` or ``dense`` (merged) file."""
    return RunFolder(folder).build_model(RunFolder.LOW_RANK if form == "low_rank" else RunFolder.MERGED)


def _resolve(
    folder: str | Path, onnx_path: str | Path, form: str, policy: str | None, data_dir: str | None, overwrite: bool
) -> tuple[nn.Module, tuple[int, ...], bool]:
    """``(model, input shape, whether folder is a compressed one)`` for :func:`export_dir`."""
    if form not in ("low_rank", "dense"):
        raise ValueError(f"`form` must be 'low_rank' or 'dense', got {form!r}")
    if Path(onnx_path).is_file() and not overwrite:
        raise ValueError(f"{onnx_path} already exists; pass `overwrite=True` to replace it, or choose another path")
    src = Path(folder)
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src} is not a folder; pass a folder written by `lorita compress` or `lorita train`"
        )
    compressed, trained = RunFolder(src).is_compressed(), RunFolder(src).is_trained()
    if compressed:
        if policy is not None:
            raise ValueError(f"{src} is already compressed; drop `policy` (it applies to training folders)")
        model, shape = _model_from_compressed(src, form)
    elif trained:
        if policy is not None:
            if form == "dense":
                raise ValueError("`policy` gives a low-rank model; drop it to export the dense model")
            out = RunFolder(src).default_out("compress")
            compress(src, out, policy, data_dir=data_dir, overwrite=overwrite)
            model, shape = _model_from_compressed(out, form)
        elif form == "dense":
            run = load_run(src, data_dir)
            model, shape = run.dense, tuple(run.example_inputs.shape[1:])
        else:
            raise ValueError(
                f"{src} is a training run: give `policy` (e.g. energy:0.99) to compress it first, or "
                f"`form='dense'` to export the merged model"
            )
    else:
        raise ValueError(
            f"{src} holds neither low_rank.safetensors (from `lorita compress`) nor config.json + "
            f"model.safetensors (from `lorita train`); pass one of those folders"
        )
    return model, shape, compressed


def export_dir(
    folder: str | Path,
    onnx_path: str | Path,
    form: str = "low_rank",
    policy: str | None = None,
    data_dir: str | None = None,
    batch: int = 2,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, float | None, tuple[int, ...]]:
    """``lorita export``: export the model of a lorita output folder to ONNX, checked.

    Folder contract:

    * a folder written by ``lorita compress`` (``low_rank.safetensors`` + ``merged.safetensors``):
      exports the low-rank model (``form="low_rank"``) or the merged dense one (``form="dense"``);
      no data needed (the files record the model name, its kwargs and the input shape).
    * a folder written by ``lorita train`` (``config.json`` + ``model.safetensors``): with
      ``policy`` it is first compressed into ``FOLDER/compressed`` (as ``lorita compress``);
      with ``form="dense"`` and no policy the merged model is exported.

    Args:
        folder: the folder. onnx_path: the ``.onnx`` file to write.
        form: ``"low_rank"`` or ``"dense"``. policy: a rank policy string (train folders only).
        data_dir: override the run's data folder (train folders only).
        batch, seed: the random example batch ``(batch, *input_shape)`` used to trace and check.
        overwrite: replace an existing ``onnx_path`` (and, with ``policy``, an earlier
            ``FOLDER/compressed``); without it an existing file is an error.

    Returns:
        ``(onnx path, max |onnxruntime − PyTorch|, input shape without the batch axis)``; the
        model takes ``float32 (N, *input_shape)`` normalized as in training (MNIST FCN:
        ``(N, 1, 28, 28)``).

    Raises:
        FileNotFoundError / ValueError: a folder that is neither, a missing policy, bad files,
            missing optional packages, an export or check failure.
    """
    model, shape, _ = _resolve(folder, onnx_path, form, policy, data_dir, overwrite)
    path, diff = _export_checked(model, shape, onnx_path, batch, seed)
    return path, diff, tuple(shape)


def _export_checked(
    model: nn.Module, shape: tuple[int, ...], onnx_path: str | Path, batch: int, seed: int
) -> tuple[Path, float | None]:
    if not isinstance(batch, int) or batch < 2:
        raise ValueError(f"`batch` must be an int >= 2 (size-1 dims are specialized by torch.export), got {batch}")
    g = torch.Generator().manual_seed(seed)
    example = torch.randn((batch, *shape), generator=g)
    return export_onnx(model.eval(), example, onnx_path)

def int8_paths(onnx_path: str | Path) -> dict[str, Path]:
    """Files ``lorita export --int8`` writes next to ``onnx_path`` (``model.onnx``):
    ``model.int8.onnx``, ``model.int8.json`` and ``model.int8.md``."""
    p = Path(onnx_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return {k: p.with_name(f"{stem}.int8.{k}") for k in ("onnx", "json", "md")}


def _source_config(src: Path, data_dir: str | None) -> TrainConfig:
    """The training config of ``src`` (a training folder, or a compressed one through the run its
    files record), for its dataset and validation split."""
    folder = RunFolder(src)
    if folder.is_trained() and not folder.is_compressed():
        cfg = TrainConfig.load(folder / RunFolder.CONFIG)
    else:
        name = RunFolder.LOW_RANK if (folder / RunFolder.LOW_RANK).is_file() else RunFolder.MERGED
        run = io.read_manifest(folder / name).get("metadata", {}).get("run")
        if not isinstance(run, str) or not (Path(run) / RunFolder.CONFIG).is_file():
            raise ValueError(
                f"{folder / name} records its training run as {run!r}, which holds no {RunFolder.CONFIG}, so the "
                f"training images to calibrate int8 on are unknown; run `lorita export` on the training folder "
                f"with `policy`, or from the folder `lorita compress` was run in"
            )
        cfg = TrainConfig.load(Path(run) / RunFolder.CONFIG)
    if data_dir is not None:
        cfg.data_dir = data_dir
    return cfg


def _onnx_predictions(path: Path, data: DataSplits, x_uint8: torch.Tensor, batch: int = 250) -> torch.Tensor:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    preds = [torch.from_numpy(session.run(None, {name: data.normalize(x_uint8[i : i + batch]).numpy()})[0]).argmax(1)
             for i in range(0, len(x_uint8), batch)]
    return torch.cat(preds)


def _markdown(summary: dict) -> str:
    f, q = summary["fp32"], summary["int8"]
    rows = [
        "| file | bytes | % of fp32 | val acc % |", "|---|---:|---:|---:|",
        f"| {Path(f['path']).name} (fp32) | {f['bytes']:,} | 100.0 | {100 * f['val_acc']:.2f} |",
        f"| {Path(q['path']).name} (int8) | {q['bytes']:,} | {100 * q['bytes'] / f['bytes']:.1f} | "
        f"{100 * q['val_acc']:.2f} |",
    ]
    ref = summary["fp32_reference_bytes"]
    return (
        f"# int8 export of {summary['source']}\n\nStatic post-training int8 (onnxruntime QDQ, per-channel int8 "
        f"weights, {summary['activations']} activations, {summary['calibrate_method']} calibration on "
        f"{summary['calibration_samples']} training images, BatchNorm folded). Validation slice: the first "
        f"{summary['val_samples']} validation images (never test images).\n\n" + "\n".join(rows)
        + f"\n\nTop-1 agreement int8 vs fp32 on the slice: {100 * summary['agreement']:.2f}%; accuracy change "
        f"{100 * (q['val_acc'] - f['val_acc']):+.2f} points. The int8 file was quantized from the BatchNorm-folded "
        f"fp32 export, made compact as the int8 file (no exporter debug metadata, short internal names: {ref:,} "
        f"bytes; int8 = "
        f"{100 * q['bytes'] / ref:.1f}% of it).\n"
    )


def export_int8_dir(
    folder: str | Path,
    onnx_path: str | Path,
    form: str = "low_rank",
    policy: str | None = None,
    data_dir: str | None = None,
    calibration_samples: int = 512,
    val_samples: int = 1000,
    activations: str = "quint8",
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """``lorita export --int8``: the fp32 export of :func:`export_dir` plus a static int8 file.

    Writes ``onnx_path`` (fp32, as :func:`export_dir`) and, next to it (:func:`int8_paths`),
    ``NAME.int8.onnx`` (calibrated on ``calibration_samples`` training images of the run's dataset,
    drawn with ``seed``; never test images), ``NAME.int8.json`` and ``NAME.int8.md`` (bytes on
    disk of both files, their accuracy on the first ``val_samples`` validation images under
    onnxruntime, and their top-1 agreement there).

    Args:
        folder, onnx_path, form, policy, data_dir, overwrite: as :func:`export_dir` (``overwrite``
            also covers the int8 files). A compressed folder's training run is found through
            the path its ``low_rank.safetensors`` records.
        calibration_samples: training images to calibrate on (>= 1; default 512).
        val_samples: validation images to score both files on (>= 1; all if fewer).
        activations: ``"quint8"`` or ``"qint8"`` (see :func:`lorita.export.export_int8`).
        seed: which training images are drawn.

    Returns:
        The summary written to ``NAME.int8.json``: ``fp32`` / ``int8`` (``path``, ``bytes``,
        ``val_acc``), ``agreement``, ``calibration_samples``, ``val_samples``, ``activations``, ...

    Raises:
        FileNotFoundError / ValueError: as :func:`export_dir`; existing int8 files without
            ``overwrite``; bad ``calibration_samples`` / ``val_samples``; a run whose config or
            data cannot be found; onnxruntime missing; quantizer failures.
    """
    out = int8_paths(onnx_path)
    for name, value in (("calibration_samples", calibration_samples), ("val_samples", val_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    if out["onnx"].is_file() and not overwrite:
        raise ValueError(f"{out['onnx']} already exists; pass `overwrite=True` to replace it, or choose another path")
    model, shape, _ = _resolve(folder, onnx_path, form, policy, data_dir, overwrite)
    data = load_data(_source_config(Path(folder), data_dir))
    n_train = len(data.train_x)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n_train, generator=g)[: min(calibration_samples, n_train)].sort().values
    calibration = data.normalize(data.train_x[pick])
    if tuple(calibration.shape[1:]) != tuple(shape):
        raise ValueError(
            f"the run's {data.name} images are {tuple(calibration.shape[1:])} but the model takes {tuple(shape)}; "
            f"pass the `data_dir` it was trained on"
        )
    fp32_path, _ = _export_checked(model, shape, onnx_path, 2, seed)
    report = export_int8(model.eval(), calibration[:2], out["onnx"], calibration, activations=activations)
    vx, vy = data.val_x[:val_samples], data.val_y[:val_samples]
    p32, p8 = _onnx_predictions(Path(fp32_path), data, vx), _onnx_predictions(report.path, data, vx)
    summary = {
        "source": str(folder), "form": form, "policy": policy, "activations": activations,
        "calibrate_method": report.calibrate_method, "calibration_samples": int(len(pick)),
        "val_samples": int(len(vy)), "seed": seed,
        "fp32": {"path": str(fp32_path), "bytes": file_bytes(fp32_path), "val_acc": float((p32 == vy).float().mean())},
        "int8": {"path": str(report.path), "bytes": report.int8_bytes, "val_acc": float((p8 == vy).float().mean())},
        "fp32_reference_bytes": report.fp32_bytes,
        "agreement": float((p32 == p8).float().mean()),
        "calibration_agreement": report.agreement,
    }
    write_json(out["json"], summary)
    io.atomic_write_text(out["md"], _markdown(summary))
    return summary
