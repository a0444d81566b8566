"""Run by Python itself at the start of a script a test starts (tiny_data.tiny_cifar_env): torchvision's
CIFAR10 then accepts the tiny CIFAR-10 files whose md5s TUDUI_ACCEPT_CIFAR_MD5 lists, as
tiny_data.accept_tiny_cifar does in the test's own process."""
import os
import sys

if os.environ.get("TUDUI_ACCEPT_CIFAR_MD5"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tiny_data import accept_tiny_cifar

    accept_tiny_cifar(set(os.environ["TUDUI_ACCEPT_CIFAR_MD5"].split(",")))
    del sys.path[0]
