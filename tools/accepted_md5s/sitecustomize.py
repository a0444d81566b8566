"""Run by Python itself at the start of a script whose PYTHONPATH holds this folder (cifar_copy.environment):
torchvision's CIFAR10 then accepts the CIFAR-10 copies whose md5s TUDUI_ACCEPT_CIFAR_MD5 lists, as
cifar_copy.accept does in its caller's process."""
import os
import sys

if os.environ.get("TUDUI_ACCEPT_CIFAR_MD5"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cifar_copy import accept

    accept(set(os.environ["TUDUI_ACCEPT_CIFAR_MD5"].split(",")))
    del sys.path[0]
