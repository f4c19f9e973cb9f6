"""Every `tdmr1` command is reached through the one dispatcher, and says its own name in its usage."""

import pytest

from tdmr1_lightning.cli import COMMANDS, main


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_each_command_answers_help_under_its_tdmr1_name(words, capsys):
    args = [*words, "--help"] if words != ("rewards",) else ["rewards", "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert f"usage: tdmr1 {' '.join(words)}" in capsys.readouterr().out


def test_a_group_without_its_command_names_the_choices():
    with pytest.raises(SystemExit, match="expected 'prompts' or 'breakdown'"):
        main(["shapes"])
