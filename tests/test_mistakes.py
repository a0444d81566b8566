"""The gallery of mistakes: which test images it picks, and how it draws them."""
import numpy as np
import pytest
import torch

from tudui import mistakes

CLASSES = ["cat", "dog", "ship"]


def test_the_most_confident_mistakes_are_the_wrong_predictions_by_falling_probability():
    labels = torch.tensor([0, 1, 2, 0, 1])
    predicted = torch.tensor([1, 1, 0, 2, 0])
    confidence = torch.tensor([0.5, 0.99, 0.9, 0.7, 0.6])
    assert mistakes.most_confident_mistakes(predicted, confidence, labels).tolist() == [2, 3, 4, 0]
    assert mistakes.most_confident_mistakes(predicted, confidence, labels, count=2).tolist() == [2, 3]


def test_right_predictions_make_no_mistakes():
    labels = torch.tensor([0, 1, 2])
    assert mistakes.most_confident_mistakes(labels, torch.ones(3), labels).tolist() == []


def test_picked_gives_the_mistaken_images_with_their_labels_predictions_and_probabilities():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    labels, predicted = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 1, 1])
    shown_images, true, guessed, probability = mistakes.picked(images, labels, predicted,
                                                               torch.tensor([0.9, 0.4, 0.8, 0.6]))
    assert shown_images[:, 0, 0, 0].tolist() == [2, 3, 1]
    assert true.tolist() == [2, 0, 1] and guessed.tolist() == [1, 1, 2]
    assert probability.tolist() == pytest.approx([0.8, 0.6, 0.4])


def test_long_class_names_are_wrapped_into_two_lines_and_cut_with_an_ellipsis():
    assert mistakes.label("golden retriever puppies photographed indoors", width=16) == "golden retriever\npuppies…"
    assert mistakes.label("n02085620_Chihuahua_and_other_small_dogs", width=16) == "n02085620_Chihua\nhua_and_other_s…"
    assert mistakes.label("cat") == "cat"


def test_class_names_are_escaped():
    assert mistakes.label("cat\x1b[31m") == "cat\\x1b[31m"


def texts(figure):
    from matplotlib.text import Text
    return figure.findobj(Text)


def test_the_gallery_draws_each_image_under_its_true_class_with_the_class_predicted_and_its_probability():
    images = torch.stack([torch.full((3, 32, 32), 10, dtype=torch.uint8), torch.full((3, 32, 32), 200, dtype=torch.uint8)])
    figure = mistakes.gallery(images, torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([0.97, 0.5]),
                              CLASSES)
    shown = [t.get_text() for t in texts(figure)]
    assert "true: cat" in shown and "true: ship" in shown
    assert "97% dog" in shown and "50% cat" in shown
    mosaic = np.asarray(figure.axes[0].images[0].get_array())
    assert [(mosaic == value).all(2).sum() for value in (10, 200)] == [32 * 32, 32 * 32]


def test_class_names_with_dollar_signs_are_drawn_as_written_not_as_mathematics():
    figure = mistakes.gallery(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([0]), torch.tensor([1]),
                              torch.tensor([0.9]), ["$x^2$", "$5 bill"], title="$a$")
    assert all(not t.get_parse_math() for t in texts(figure) if "$" in t.get_text())
    mistakes.as_array(figure)


def test_a_gallery_without_mistakes_says_every_image_was_classified_correctly():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8), *(torch.zeros(0, dtype=torch.int64),) * 2, torch.zeros(0)
    figure = mistakes.gallery(*empty, CLASSES)
    assert any("every test image" in t.get_text() for t in texts(figure))


def test_the_gallery_becomes_an_rgb_array_for_tensorboard():
    figure = mistakes.gallery(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 2]),
                              torch.tensor([1, 2, 0]), torch.tensor([0.9, 0.8, 0.7]), CLASSES)
    array = mistakes.as_array(figure)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and array.shape[1] > 300


def test_the_gallery_is_saved_as_a_png(tmp_path):
    figure = mistakes.gallery(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([0]), torch.tensor([1]),
                              torch.tensor([0.9]), CLASSES)
    mistakes.save_png(figure, tmp_path / "mistakes.png")
    assert (tmp_path / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mistakes.png"]
