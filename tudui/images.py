"""One image as the network sees it: any file PIL reads (turned as its EXIF orientation says), a PIL image or a
tensor, as uint8 or 0-1 float RGB (3, 32, 32), with a one-line DataError for anything it cannot use."""
import os
from pathlib import Path

import numpy as np
import torch

from tudui.console import shown
from tudui.errors import DataError
from tudui.checkpoints import regular_file_problem

MAX_IMAGE_PIXELS = 40_000_000  # about a 6000x6000 photo; anything larger is refused before decoding


def decode_image(path):
    """Any image PIL reads (grayscale, RGBA, palette, CMYK ...) as uint8 RGB (3, 32, 32), resized bilinearly as
    torchvision's Resize((32, 32)). Raises DataError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not str(path):  # Path("") is the current folder, which would be named instead
        raise DataError("an image path is empty; pass image files")
    path = Path(path)
    if regular_file_problem(path):  # a named pipe would block the read forever
        raise DataError(f"image {shown(path)} {regular_file_problem(path)}; pass image files")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataError(f"image {shown(path)} is too large ({im.width}x{im.height} pixels, limit "
                                f"{MAX_IMAGE_PIXELS:,}); shrink it first")
            return rgb_32x32(im, f"image {shown(path)}")
    except FileNotFoundError:
        problem = "does not exist; check the path"
    except IsADirectoryError:
        problem = "is a directory; pass the image files inside it"
    except PermissionError:
        problem = "is not readable; check its permissions"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        problem = f"is too large (over {MAX_IMAGE_PIXELS:,} pixels); shrink it first"
    except UnidentifiedImageError:
        problem = "is not an image format PIL can read; convert it to PNG or JPEG"
    except DataError:
        raise
    except Exception as e:  # PIL raises many kinds for damaged files: truncated data, bad headers
        problem = f"is damaged or truncated ({type(e).__name__}: {str(e)[:100]}); remove or replace it"
    raise DataError(f"image {shown(path)} {problem}")


def rgb_32x32(im, name):
    """A PIL image as uint8 RGB (3, 32, 32), turned as its EXIF orientation says; NAME names it in a DataError."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):  # convert("RGB") would clip every value over 255 to white
        sixteen_bit = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray(((sixteen_bit * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif im.mode in ("I", "F"):
        raise DataError(f"{name} has 32-bit pixel values (PIL mode {im.mode}), which have no fixed white; "
                        "save it with 8 or 16 bits per channel (PNG or JPEG)")
    im = im.convert("RGB")
    if im.size != (32, 32):
        im = im.resize((32, 32), Image.BILINEAR)
    return np.array(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def image_pixels(image):
    """IMAGE (a path, a PIL image, or a (3, H, W) tensor, uint8 or float from 0 to 1) as float (3, 32, 32) on
    ToTensor's 0-1 scale, resized bilinearly. Raises DataError naming the problem."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(decode_image(image)).float().div_(255)
    if isinstance(image, Image.Image):
        return torch.from_numpy(rgb_32x32(image, "the PIL image")).float().div_(255)
    if not (torch.is_tensor(image) and image.dim() == 3 and image.shape[0] == 3 and image.numel()):
        shape = f"a tensor of shape {tuple(image.shape)}" if torch.is_tensor(image) else type(image).__name__
        raise DataError(f"an image must be a file path, a PIL image or a (3, H, W) tensor (got {shape}); "
                        "for a batch, pass a list of images")
    if image.dtype == torch.uint8:
        pixels = image.float().div(255)
    elif image.is_floating_point() and torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1:
        pixels = image.float()
    else:
        raise DataError(f"an image tensor must be uint8, or float from 0 to 1 as ToTensor gives (got {image.dtype}"
                        f" from {image.min().item():.3g} to {image.max().item():.3g}); divide uint8 pixels by 255")
    if pixels.shape[1:] != (32, 32):
        pixels = torch.nn.functional.interpolate(pixels[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    return pixels.cpu()
