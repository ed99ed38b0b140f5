"""`robustgan predict`: classify image files with a trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from robustgan.errors import RobustganError
from robustgan.runs import RunDir
from robustgan.runtime import geometry_for, load_model


def load_image(path: Path, channels: int, size: int) -> torch.Tensor:
    """An image file as a (1, C, size, size) float tensor in [0, 1]: converted to grey or
    RGB as the run's dataset needs and resized (bilinear) to the run's image size."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            raw = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except FileNotFoundError:
        raise RobustganError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise RobustganError(f"{path}: not a readable image ({err.__class__.__name__})") from None
    return raw.view(size, size, channels).permute(2, 0, 1)[None].float() / 255


def predict(run_dir, paths: list[Path], device="cpu") -> list[tuple[Path, int, float, str]]:
    """(path, class, confidence, class name) for each image, from the run's defended model;
    the names are an imagefolder run's folder names (else the class index)."""
    dcfg = RunDir(run_dir).config().data
    geometry = geometry_for(dcfg)  # no dataset files needed
    model = load_model(run_dir).to(device)
    results = []
    for path in paths:
        x = load_image(Path(path), geometry.channels, geometry.image_size)
        with torch.no_grad():
            probs = torch.softmax(model(x.to(device)).float(), 1)[0].cpu()
        label = int(probs.argmax())
        results.append((Path(path), label, float(probs.max()), dcfg.classes[label] if dcfg.classes else str(label)))
    return results
