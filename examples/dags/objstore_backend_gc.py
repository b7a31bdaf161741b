# Airflow DAG: the objstore-backend GC, daily. Keep this comment: Airflow's safe mode only
# parses files whose text names "airflow" and "dag" (see objstore_backend.dags for options).
from objstore_backend.dags import gc_dag

dag = gc_dag()
