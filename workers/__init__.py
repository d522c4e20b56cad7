"""Ray workers: rollout (vLLM / transformers), reward, and the FSDP2 actor / critic / reference groups."""
