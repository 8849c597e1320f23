"""Causal tracing over a set of facts: ROME's average indirect effect (Meng et al. 2022, Figure 2) for an RWKV model.

A fact set is a JSONL file of {"prompt", "subject", "answer", optional "id"} (`facts`); every fact is traced by the
Causal tracing page's tracer with the same settings, for each restore kind (the whole layer, the recurrent state only,
the residual stream only, the time-mix and channel-mix windows), one file per fact in an output folder (`store`);
the facts run in this process or spread over the Ray workers of a `rwkv_core.jobs.manager.JobManager` (`run`), and
a killed run resumes where it stopped. The aggregate is the average indirect effect by token class and layer over the
facts the model knows, with bootstrap confidence intervals (`effects`). The command is
`python -m rwkv_core trace-set`; the app's page is "Batch tracing". No Streamlit here.
"""

from rwkv_core.analysis.factset.effects import (TOKEN_CLASSES, AverageEffect, average_effects, class_effects,
                                                class_tokens)
from rwkv_core.analysis.factset.facts import (DEMO_FACTS_PATH, MAX_FACTSET_BYTES, BadLine, FactLine, demo_facts,
                                              parse_facts, read_facts, safe_id)
from rwkv_core.analysis.factset.run import (KIND_TITLES, RESTORE_KINDS, FactSetProgress, FactSetSettings,
                                            FactSetSummary, InProcessExecutor, RayExecutor, check_fact_tokens,
                                            fact_jobs, run_fact_set)
from rwkv_core.analysis.factset.store import FactRecord, FactSetFolder, aie_arrays, aie_csv, facts_csv

__all__ = ["TOKEN_CLASSES", "AverageEffect", "average_effects", "class_effects", "class_tokens", "DEMO_FACTS_PATH",
           "MAX_FACTSET_BYTES", "BadLine", "FactLine", "demo_facts", "parse_facts", "read_facts", "safe_id",
           "KIND_TITLES", "RESTORE_KINDS", "FactSetProgress", "FactSetSettings", "FactSetSummary",
           "InProcessExecutor", "RayExecutor", "check_fact_tokens", "fact_jobs", "run_fact_set", "FactRecord",
           "FactSetFolder", "aie_arrays", "aie_csv", "facts_csv"]
