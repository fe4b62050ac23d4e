"""Every recipe in configs/ builds its data pipeline, model, optimizer and schedule (train.py --dry_run).

Its own file, so that pytest-xdist's loadfile can run it beside test_train.py's trainings.
"""
import glob
import os
import re

import pytest

import train
from tests.utils import REPO_ROOT


@pytest.mark.slow
# The port's gmlp_Ti/S/B recipes: gmlp_Ti runs for real in test_port_commands.py, and S and B differ from it in the
# model name alone, which their twins gmlp_s16_224/gmlp_b16_224 build here.
@pytest.mark.parametrize("config", sorted(p for p in glob.glob(str(REPO_ROOT / "configs" / "*" / "*.yaml"))
                                          if not re.search(r"gmlp_(Ti|S|B)\.yaml$", p)),
                         ids=lambda p: os.path.basename(p))
def test_every_config_builds_in_a_dry_run(config, imagenet_folder, caplog):
    code = train.main(["-c", config, "--data_dir", str(imagenet_folder), "--distribute", "False", "--dry_run", "True"])
    assert code == 0
