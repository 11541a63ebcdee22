"""Convert an official checkpoint file to visionattn's format (strict: every key must land).

    visionattn-convert FAMILY_OR_MODEL IN OUT [--model NAME] [--ema] [--trust]
                                       [--kwargs k=v ...] [--converter-kwargs k=v ...]

FAMILY_OR_MODEL is a model name (``biformer_small``) or a family (``biformer``); with a family the
variant is the ``--model`` given, else the one model of the family whose keys and shapes the
converted checkpoint fits. OUT loads with ``create_model(NAME, checkpoint=OUT)``: a ``.safetensors``
OUT is a safetensors file (the tensors, and the conversion record as string metadata); any other
name a ``torch.save`` of ``{'state_dict': ..., 'meta': {...}}``. In a clone,
``python tools/convert_checkpoint.py`` is the same program.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from mmengine.config import DictAction

import visionattn
from visionattn import hub
from visionattn.factory import model_family
from visionattn.cli.console import ArgumentParser, cli_main


def _fits(name: str, checkpoint, family: str, model_kwargs: dict, conv_kwargs: dict) -> bool:
    """Whether the converted checkpoint has exactly the keys and shapes of model ``name`` (built on meta)."""
    with torch.device("meta"):
        model = visionattn.create_model(name, **model_kwargs)
    try:
        sd = hub.convert_checkpoint(checkpoint, model, family, **conv_kwargs)
    except Exception:
        return False
    ref = model.state_dict()
    return set(sd) == set(ref) and all(tuple(sd[k].shape) == tuple(ref[k].shape) for k in ref)


def convert(target: str, src: str, dst: str, model: str = None, model_kwargs: dict = None,
            converter_kwargs: dict = None, trusted: bool = False) -> str:
    """Convert ``src`` into ``dst``; return the model name it was converted for."""
    model_kwargs, converter_kwargs = model_kwargs or {}, converter_kwargs or {}
    names = visionattn.list_models()
    if model is None and target in names:
        model = target
    family = model_family(model) if model else target
    checkpoint = hub.read_checkpoint(src, trusted=trusted)
    if model is None:
        candidates = [n for n in names if model_family(n) == family]
        if not candidates:
            raise ValueError(f"{target!r} is neither a model nor a family with registered models "
                             f"(families: {sorted({model_family(n) for n in names})})")
        fitting = [n for n in candidates if _fits(n, checkpoint, family, model_kwargs, converter_kwargs)]
        if len(fitting) != 1:
            raise ValueError(f"the checkpoint fits {fitting or 'none'} of the {family} models {candidates}: "
                             f"name the variant with --model (and --kwargs for non-default settings)")
        model = fitting[0]
    net = visionattn.create_model(model, **model_kwargs)
    state_dict = hub.convert_checkpoint(checkpoint, net, family, **converter_kwargs)
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"converted checkpoint does not fit {model}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    meta = {"model": model, "family": family, "model_kwargs": model_kwargs, "converted_from": Path(src).name,
            "converter_kwargs": converter_kwargs, "visionattn": visionattn.__version__}
    save(net.state_dict(), meta, dst)
    return model


def save(state_dict: dict, meta: dict, dst: str) -> None:
    """Write ``state_dict`` to ``dst`` atomically: safetensors for a ``.safetensors`` name, else torch.save."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        if dst.suffix == ".safetensors":
            from safetensors.torch import save_file

            # safetensors stores each tensor once: tied or viewed tensors become their own copies
            tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
            save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
        else:
            torch.save({"state_dict": state_dict, "meta": meta}, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


@cli_main
def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="FAMILY_OR_MODEL")
    parser.add_argument("src", metavar="IN", help="official checkpoint file (or http(s) URL)")
    parser.add_argument("dst", metavar="OUT", help="where to write the converted checkpoint (.safetensors: safetensors)")
    parser.add_argument("--model", help="model name when FAMILY_OR_MODEL is a family")
    parser.add_argument("--ema", action="store_true", help="take the EMA weights (converter_kwargs ema=True)")
    parser.add_argument("--kwargs", nargs="*", default={}, action=DictAction, metavar="K=V",
                        help="model constructor kwargs")
    parser.add_argument("--converter-kwargs", nargs="*", default={}, action=DictAction, metavar="K=V",
                        help="extra converter kwargs")
    parser.add_argument("--trust", action="store_true",
                        help="read IN with full pickle (can run code): only for files you trust")
    args = parser.parse_args(argv)
    conv = dict(args.converter_kwargs)
    if args.ema:
        conv["ema"] = True
    model = convert(args.target, args.src, args.dst, args.model, args.kwargs, conv, args.trust)
    print(f"converted {args.src} -> {args.dst} for {model} (sha256 {hub.file_sha256(args.dst)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
