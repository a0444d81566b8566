"""tudui/pictures.py: the gallery of mistakes (which test images it picks, how it draws them), the confusion
matrix and the prediction grid."""
import numpy as np
import pytest
import torch

from tudui import pictures

CLASSES = ["cat", "dog", "ship"]


def test_the_most_confident_mistakes_are_the_wrong_predictions_by_falling_probability():
    labels = torch.tensor([0, 1, 2, 0, 1])
    predicted = torch.tensor([1, 1, 0, 2, 0])
    confidence = torch.tensor([0.5, 0.99, 0.9, 0.7, 0.6])
    assert pictures.most_confident_mistakes(predicted, confidence, labels).tolist() == [2, 3, 4, 0]
    assert pictures.most_confident_mistakes(predicted, confidence, labels, count=2).tolist() == [2, 3]


def test_right_predictions_make_no_mistakes():
    labels = torch.tensor([0, 1, 2])
    assert pictures.most_confident_mistakes(labels, torch.ones(3), labels).tolist() == []


def test_picked_gives_the_mistaken_images_with_their_labels_predictions_and_probabilities():
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    labels, predicted = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 1, 1])
    shown_images, true, guessed, probability = pictures.picked(images, labels, predicted,
                                                               torch.tensor([0.9, 0.4, 0.8, 0.6]))
    assert shown_images[:, 0, 0, 0].tolist() == [2, 3, 1]
    assert true.tolist() == [2, 0, 1] and guessed.tolist() == [1, 1, 2]
    assert probability.tolist() == pytest.approx([0.8, 0.6, 0.4])


def test_long_class_names_are_wrapped_into_two_lines_and_cut_with_an_ellipsis():
    assert pictures.label("golden retriever puppies photographed indoors", width=16) == "golden retriever\npuppies…"
    assert pictures.label("n02085620_Chihuahua_and_other_small_dogs", width=16) == "n02085620_Chihua\nhua_and_other_s…"
    assert pictures.label("cat") == "cat"


def test_class_names_are_escaped():
    assert pictures.label("cat\x1b[31m") == "cat\\x1b[31m"


def texts(figure):
    from matplotlib.text import Text
    return figure.findobj(Text)


def test_the_gallery_draws_each_image_under_its_true_class_with_the_class_predicted_and_its_probability():
    images = torch.stack([torch.full((3, 32, 32), 10, dtype=torch.uint8), torch.full((3, 32, 32), 200, dtype=torch.uint8)])
    figure = pictures.gallery(images, torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([0.97, 0.5]),
                              CLASSES)
    shown = [t.get_text() for t in texts(figure)]
    assert "true: cat" in shown and "true: ship" in shown
    assert "97% dog" in shown and "50% cat" in shown
    mosaic = np.asarray(figure.axes[0].images[0].get_array())
    assert [(mosaic == value).all(2).sum() for value in (10, 200)] == [32 * 32, 32 * 32]


def test_class_names_with_dollar_signs_are_drawn_as_written_not_as_mathematics():
    figure = pictures.gallery(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([0]), torch.tensor([1]),
                              torch.tensor([0.9]), ["$x^2$", "$5 bill"], title="$a$")
    assert all(not t.get_parse_math() for t in texts(figure) if "$" in t.get_text())
    figure.canvas.draw()  # no TeX parse error either


def test_a_gallery_without_mistakes_says_every_image_was_classified_correctly():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8), *(torch.zeros(0, dtype=torch.int64),) * 2, torch.zeros(0)
    figure = pictures.gallery(*empty, CLASSES)
    assert any("every test image" in t.get_text() for t in texts(figure))


def test_the_confusion_matrix_labels_each_cell_with_its_count_and_each_axis_with_the_class_names():
    figure = pictures.confusion_figure(torch.tensor([[5, 1], [0, 7]]), ["cat", "dog\x1b"])
    shown = [t.get_text() for t in texts(figure)]
    assert {"5", "1", "0", "7"} <= set(shown) and "dog\\x1b" in shown and "dog\x1b" not in shown


def test_the_prediction_grid_names_the_true_class_of_each_wrong_prediction_alone():
    figure = pictures.prediction_grid(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]),
                                      torch.tensor([0, 2]), CLASSES)
    shown = [t.get_text() for t in texts(figure)]
    assert "cat" in shown and "ship (dog)" in shown
