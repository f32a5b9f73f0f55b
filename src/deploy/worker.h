/*
 * worker.h — `xds worker --role expert|prefill|decode ...`: the entry point
 * of one process of a disaggregated deployment, started by the supervisor
 * (deploy/supervisor.h). cli/main.c's command table calls it.
 */
#ifndef XDS_DEPLOY_WORKER_H
#define XDS_DEPLOY_WORKER_H

/* Parse the worker's flags and run its role; the process exit status
 * (0 stopped cleanly, 1 failed, 2 bad invocation). */
int xds_deploy_worker_main(int argc, char **argv);

#endif
