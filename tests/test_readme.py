"""README.md and README.zh-CN.md, the guide in the tutorial's language: they name the same commands and
flags, each flag exists in the --help of the script it is for, and each guide links the other."""
import re
import runpy

from conftest import ROOT

GUIDES = [ROOT / "README.md", ROOT / "README.zh-CN.md"]
NOT_OURS = {"--nproc_per_node"}  # torchrun's


def commands(path):
    """The command lines of PATH's shell blocks, their comments left out."""
    found, shell = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            shell = None if shell is not None else line[3:] in ("", "bash")
            continue
        command = line.split("  #")[0].strip()
        if shell and re.match(r"(\.venv/bin/)?python3? ", command + " "):
            found.append(command)
    return found


def flags(path):
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", path.read_text()))


def test_both_guides_give_the_same_commands():
    english, chinese = (commands(path) for path in GUIDES)
    assert english and sorted(english) == sorted(chinese)


def test_both_guides_name_the_same_flags():
    english, chinese = (flags(path) for path in GUIDES)
    assert english - chinese == set() and chinese - english == set()


def test_every_flag_the_guides_name_is_in_the_help_of_a_script():
    import predict
    from tudui import settings
    helps = " ".join([settings.build_parser().format_help(), predict.build_parser().format_help(),
                      runpy.run_path(str(ROOT / "bench" / "compare.py"))["build_parser"]().format_help()])
    for flag in flags(GUIDES[0]) | flags(GUIDES[1]):
        assert flag in NOT_OURS or re.search(rf"{flag}(?![\w-])", helps), flag


def test_each_guide_links_the_other_in_its_first_lines():
    english, chinese = (path.read_text().splitlines()[:6] for path in GUIDES)
    assert any("README.zh-CN.md" in line for line in english) and any("README.md" in line for line in chinese)
