"""``lorita export``: export the model of a lorita folder (compressed or trained) to ONNX,
checked with onnxruntime (:func:`lorita.export.export_onnx`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lorita.export import export_onnx
from lorita.runs.compress import compress
from lorita.runs.folder import RunFolder, load_run

__all__ = ["export_dir"]


def _model_from_compressed(folder: Path, form: str) -> tuple[nn.Module, tuple[int, ...]]:
    """``(model, input shape)`` of a compressed folder's ``low_rank`` or ``dense`` (merged) file."""
    return RunFolder(folder).build_model(RunFolder.LOW_RANK if form == "low_rank" else RunFolder.MERGED)


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
    if not isinstance(batch, int) or batch < 2:
        raise ValueError(f"`batch` must be an int >= 2 (size-1 dims are specialized by torch.export), got {batch}")
    g = torch.Generator().manual_seed(seed)
    example = torch.randn((batch, *shape), generator=g)
    path, diff = export_onnx(model.eval(), example, onnx_path)
    return path, diff, tuple(shape)
