"""Jobs made of training runs: the sweep over synthetic ratios (`sweep`), the self-consuming loop (`recursive`),
and the offline demo (`demo`)."""
