#!/usr/bin/env bash
# STAPO in your own verl config, without this package's recipe: verl's stock ppo_trainer (or your
# config) plus the policy-loss overrides. Everything else (model, data, rollout, batch sizes)
# stays yours; pass it as further overrides or via CONFIG_PATH / CONFIG_NAME.
#   examples/stapo/plain_overrides.sh [your hydra overrides...]
# Needs: stapo-verl installed next to verl (pip install -e .), so `import verl` loads the plugin;
#   whatever your config needs (GPUs for vLLM rollout). DRY_RUN=1 prints the composed config
#   (main_ppo --cfg job) instead of training.
# Takes: as long as your own run; DRY_RUN=1 a few seconds.
# Writes: whatever your config writes (verl's checkpoints and logs).
set -euo pipefail
config=()
[ -n "${CONFIG_PATH:-}" ] && config+=(--config-path "$CONFIG_PATH")
[ -n "${CONFIG_NAME:-}" ] && config+=(--config-name "$CONFIG_NAME")
[ "${DRY_RUN:-0}" = 1 ] && config+=(--cfg job)
exec "${PYTHON:-python3}" -m verl.trainer.main_ppo "${config[@]}" \
  actor_rollout_ref.actor.policy_loss._target_=stapo_verl.method.config.TokenMaskPolicyLossConfig \
  actor_rollout_ref.actor.policy_loss.loss_mode=stapo \
  +actor_rollout_ref.actor.policy_loss.tau_prob=0.002 \
  +actor_rollout_ref.actor.policy_loss.entropy_quantile=0.75 \
  "$@"
