"""What each dashboard panel shows and when to worry: Grafana's (i) tooltip on the panel.

Kept beside the dashboards (grafana/dashboards.py looks every panel's title up here when the panel
does not carry its own text), so a panel without help fails the build instead of shipping silent.
"""

from __future__ import annotations

PANEL_HELP = {
    # Overview
    "Serving up": "1 while the vLLM server answers its health check; 0 while it is down or restarting.",
    "Consumer lag": "Messages on the prompts topic not yet in the buffer, all partitions. Growing: ingest is"
    " behind or paused by backpressure (Ingest dashboard).",
    "Waiting for labels": "Distinct prompts stored but not labeled yet. Above ingest.backlog_high_watermark,"
    " ingest pauses until labeling catches up.",
    "Data disk free": "Free share of the volume holding data_dir (buffer, snapshots, adapters). Retention"
    " frees space daily; below 10% an alert fires.",
    "Adapters: decisions and swaps (per hour)": "Promotion decisions (promote, reject, rollback) and adapter"
    " swaps per hour: the loop's verdicts on what it trained.",
    "Training runs (per hour)": "Training runs finished per hour, by outcome. Failures come with a reason"
    " in evolvd adapters list and the runs table.",
    # Ingest
    "Messages by outcome": "Messages per second: stored as events, feedback, duplicates, or dead letters"
    " (with a reason in the dead_letters table).",
    "Lag per partition": "Messages per partition between the buffer's committed offset and the topic's end.",
    "Backpressure": "1 while ingest is paused because too many prompts wait for labels; it resumes below"
    " the low watermark.",
    "Batch write latency": "Time to commit one batch of events and its offsets to the buffer (one"
    " transaction), median and p95.",
    "Write errors, batches and restarts": "Failed batch writes (retried, then split until the bad record is"
    " isolated) and restarts of the ingest loop. Either rising steadily needs a look at the log.",
    "Writer stalled on a batch (the buffer refuses every write)": "Seconds the writer has been retrying a"
    " batch the buffer refuses; /readyz turns unready meanwhile. Non-zero for long: the disk or the buffer"
    " file needs attention.",
    "Rows per table": "Rows in each buffer table; retention ages old events, their derived rows and dead"
    " letters out.",
    "Buffer file and free disk": "Size of buffer.duckdb against the free space of its volume.",
    # Labeling
    "Labels and samples per second": "Prompts labeled per second, and the sampled answers behind them"
    " (labeling.samples per prompt).",
    "Backlog": "Distinct prompts waiting to be labeled; copies of a labeled prompt are not counted.",
    "Label confidence (winning vote share)": "Share of samples agreeing with the winning answer, median and"
    " p10. Low: the model disagrees with itself, and the training policy's min_confidence filters more.",
    "Extraction failures by answer kind": "Samples whose final answer could not be read, by expected kind."
    " A rise after a model change usually means the answer format drifted.",
    "Self-critique scores by parse status": "Critiques scored by the judge's expected score over its"
    " score-token probabilities (expected, G-Eval), read from their score line (ok), picked in a"
    " constrained follow-up, or not scored at all (malformed, missing).",
    "Refinement accept rate": "Share of self-refinements accepted (re-scored higher and still agreeing with"
    " the vote).",
    "Preference pairs and training examples": "Preference pairs and training examples the labeler writes"
    " per second: what the next snapshot can learn from.",
    # Policies and drift
    "Decisions by policy and outcome (per hour)": "Every policy decision per hour: safety screening of"
    " examples, drift checks, the training gate and promotion.",
    "Policy files": "Edits of the policy directory applied or rejected per hour; a rejected edit leaves the"
    " previous policy in force (evolvd status shows why).",
    "Embedding drift": "MMD² between recent and reference prompt embeddings, against the drift policy's"
    " threshold.",
    "Drift roles": "1 while the drift guard blocks training, or the drift trigger asks for a run.",
    "Feature drift p-values": "Per feature (length, language, ...), the two-sample test's p-value; low values"
    " mean the stream's shape changed.",
    # Serving
    "Up and restarts": "vLLM up (1/0) and restarts by the supervisor; each restart re-applies the live,"
    " previous and canary adapters.",
    "vLLM tokens per second": "Prompt and generated tokens per second, from vLLM's own metrics.",
    "vLLM time to first token p95 and KV cache use": "vLLM's p95 time to first token and the share of its KV"
    " cache in use; near 1 the server queues requests.",
    "Swaps by action and outcome (per hour)": "Hot-swaps per hour: promote, canary, rollback, reapply after a"
    " restart, and rejected attempts (with reasons in the swaps table).",
    "Swap latency (load to alias flip)": "Time from loading an adapter to flipping the public name to it,"
    " median and p95.",
    "Rollbacks by outcome (per hour)": "Rollbacks per hour: by an operator, a failed canary, or an adapter"
    " that did not reload after a restart.",
    "Requests by route and status": "Gateway requests per second by route and HTTP status.",
    "Latency p50 / p95 by route": "Gateway request latency, median and p95, including vLLM's time.",
    "Error ratio (5xx)": "Share of gateway requests answered 5xx: vLLM down or failing. A canary is judged"
    " on this too.",
    # Training and evaluation
    "Runs by outcome (per hour)": "Training runs finished per hour by outcome (succeeded, failed, timed"
    " out).",
    "Run duration": "Wall time of a training run, median and p95.",
    "Optimizer steps and data sets": "Optimizer steps per second by phase (SFT, DPO), and snapshots frozen.",
    "Last evaluation by suite": "The latest candidate's and live adapter's scores per evaluation suite"
    " (held-out, forgetting, safety, output drift).",
    "Evaluations and promotion decisions (per hour)": "Candidate evaluations and the promotion gate's"
    " verdicts per hour.",
    "Canary taking traffic": "1 while a canary adapter takes its share of the public name's traffic.",
    "Job runs by outcome (per hour)": "Runs of each scheduled job per hour by outcome (ok, idle, skipped,"
    " failed).",
    "Job duration p95": "p95 wall time of each scheduled job.",
    "Paused jobs": "1 for each job an operator paused (evolvd jobs pause); pauses survive restarts.",
}
