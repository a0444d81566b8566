"""Started by Python itself in a script a test runs (tiny_data.registered_env): registers the tiny CIFAR-10
files of TUDUI_TEST_CIFAR with torchvision, as tiny_data.register_cifar_checksums does in the test's own process."""
import os
import sys

if os.environ.get("TUDUI_TEST_CIFAR"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tiny_data import register_cifar_checksums

    register_cifar_checksums(os.environ["TUDUI_TEST_CIFAR"])
    del sys.path[0]
