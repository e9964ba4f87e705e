"""The accelerate / DeepSpeed hardware configs and the multi-node launch scripts."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def test_all_hardware_configs_present():
    assert {p.stem for p in CONFIGS} >= {"single_gpu", "ddp", "zero2", "zero3", "zero3_offload"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    raw = yaml.safe_load(path.read_text())
    cfg = ClusterConfig.from_yaml_file(str(path))  # what accelerate launch itself parses
    assert raw["num_processes"] >= 1 and path.read_text().startswith("#")
    if raw["distributed_type"] == "DEEPSPEED" and "deepspeed_config_file" in raw["deepspeed_config"]:
        import json

        from accelerate.utils import DeepSpeedPlugin

        path = ROOT / raw["deepspeed_config"]["deepspeed_config_file"]
        plugin = DeepSpeedPlugin(hf_ds_config=str(path), zero3_init_flag=raw["deepspeed_config"]["zero3_init_flag"])
        assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3
        assert json.loads(path.read_text())["bf16"]["enabled"] == "auto"  # follows model.dtype (align.trainer)
        assert "mixed_precision" not in raw  # accelerate refuses it next to a JSON file
    elif raw["distributed_type"] == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin

        ds = raw["deepspeed_config"]
        plugin = DeepSpeedPlugin(
            zero_stage=ds["zero_stage"],
            offload_optimizer_device=ds["offload_optimizer_device"],
            offload_param_device=ds["offload_param_device"],
            zero3_init_flag=ds["zero3_init_flag"],
        )
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == ds["zero_stage"] in (2, 3)
        if "offload" in path.stem:
            assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
        assert cfg.mixed_precision == "bf16"


@pytest.mark.parametrize("script", sorted((ROOT / "launch").glob("*.sh")), ids=lambda p: p.name)
def test_launch_scripts_pass_recipe_and_overrides_through(script, tmp_path):
    """Dry run: the script prints the accelerate command it would run on this node."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DRY_RUN": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "7",
        "MASTER_ADDR": "node0",
        "GPUS_PER_NODE": "8",
    }
    out = subprocess.run(
        ["bash", str(script), "recipe=beavertails", "estimator.coupling=decoupled"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "align/train_dpo.py recipe=beavertails estimator.coupling=decoupled" in out
    assert "--num_machines 2" in out and "--machine_rank 1" in out and "--num_processes 16" in out


def test_launch_script_runs_the_sft_entry_when_asked():
    env = {
        "PATH": "/usr/bin:/bin",
        "DRY_RUN": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "MASTER_ADDR": "node0",
        "ENTRY": "align/train_sft.py",
    }
    out = subprocess.run(
        ["bash", str(ROOT / "launch" / "accelerate_node.sh"), "recipe=tiny_chat_sft"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "align/train_sft.py recipe=tiny_chat_sft" in out


def test_ablation_array_script_runs_its_task_cell(tmp_path):
    """The slurm array script hands its task id and an accelerate launcher to align.ablate (report-only here)."""
    import sys

    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            "bash",
            str(ROOT / "launch" / "ablate_array.sbatch"),
            "recipe=demo",
            "grid.coupling=coupled,decoupled",
            f"grid.output_dir={tmp_path}",
            "grid.report_only=true",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Not run yet (2)" in (tmp_path / "summary.md").read_text()
    bad = subprocess.run(
        [
            "bash",
            str(ROOT / "launch" / "ablate_array.sbatch"),
            "recipe=demo",
            "grid.coupling=coupled,decoupled",
            f"grid.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        env={**env, "SLURM_ARRAY_TASK_ID": "5"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "grid.task=5 but the grid has 2 cells" in bad.stderr
