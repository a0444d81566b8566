"""tudui/images.py: one image, from a file, a PIL image or a tensor, as the network sees it."""
import io

import numpy as np
import pytest
import torch
from hypothesis import given
from PIL import Image

from conftest import FUZZ, random_or_mutated
from tudui import images as image_reading
from tudui.errors import DataError
from tudui.images import decode_image, image_pixels


def test_a_photo_is_read_turned_as_its_exif_orientation_says(tmp_path):
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:, :8] = 255  # a white strip on the left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: shown turned 90 degrees clockwise, as phones store portrait photos
    Image.fromarray(stored).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=100)
    shown = decode_image(tmp_path / "turned.jpg")
    assert shown[:, :8].mean() > 200 and shown[:, -8:].mean() < 50 and shown[:, :, :8].mean() < 200  # strip on top
    pil = image_pixels(Image.open(tmp_path / "turned.jpg"))
    assert torch.equal((pil * 255).round().to(torch.uint8), torch.from_numpy(shown))


def test_a_16_bit_grayscale_image_keeps_its_grey_levels_instead_of_turning_white(tmp_path):
    import numpy as np
    from PIL import Image

    levels = np.linspace(0, 255, 32 * 32).round().reshape(32, 32).astype(np.uint16)
    Image.fromarray(levels * 257).save(tmp_path / "sixteen.png")  # 0..65535, as a 16-bit PNG stores them
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    assert (decode_image(tmp_path / "sixteen.png") == levels.astype(np.uint8)).all()


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(images, monkeypatch):
    from PIL import Image

    path = images / "RGB.png"
    width, height = Image.open(path).size
    monkeypatch.setattr(image_reading, "MAX_IMAGE_PIXELS", width * height)
    assert decode_image(path).shape == (3, 32, 32)
    monkeypatch.setattr(image_reading, "MAX_IMAGE_PIXELS", width * height - 1)
    with pytest.raises(DataError, match=f"image {path} is too large"):
        decode_image(path)


def png_bytes():
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@FUZZ
@given(random_or_mutated(png_bytes()))
def test_image_loading_raises_only_data_error_on_any_bytes(tmp_path, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        assert decode_image(path).shape == (3, 32, 32)
    except DataError:
        pass


