-- The user tower's weights as plain arrays (an .npz written with np.savez: `weight_<i>`, `bias_<i>`
-- per Linear layer, `unknown` for a hybrid tower), written by `recsys load-vectors` beside the
-- torch state_dict in `weights`. The serving processes (consumer, API) read these with NumPy and
-- never import torch (allow_pickle=False: no unpickling). NULL for versions loaded before this
-- column: the recommender then reads `weights` with torch; loading such a version again
-- (`recsys load-vectors --version V`) fills it in. See docs/model.md.
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS user_tower bytea;
