"""Apache Flink: the local session cluster, its REST API, and the job program.

Nothing here imports PyFlink except `job` (which runs inside Flink, from a job
bundle); the app talks to Flink through its command line and REST API.
"""
