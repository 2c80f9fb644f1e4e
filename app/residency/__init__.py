"""On-demand residency: backends that sleep (vLLM's sleep mode) or stop while others use the GPU.

- `budget`: which backends may hold GPU memory together (pure arithmetic over the shares);
- `policy`: whom to put to sleep and whom to wake next (pure functions);
- `client`: vLLM's dev routes (`/sleep`, `/wake_up`, `/is_sleeping`, `/collective_rpc`, ...);
- `memory`: host RAM for level-1 sleep and the GPU memory a sleeping process still holds;
- `slot`: one on-demand backend as the manager keeps it (its waiters, its in-flight holders);
- `manager`: the single writer of every `Residency`, one swap at a time.

The record itself, `Residency`, lives with the other states in `routing.state` (routing reads it;
this package sits above routing). Nothing is imported here: `settings` reads `budget` without
pulling in the manager.
"""
