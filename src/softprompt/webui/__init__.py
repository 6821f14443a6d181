"""``softprompt webui``: LlamaBoard for soft prompts, a Gradio page over the existing jobs.

Train, Evaluate & predict, Chat, Compare & sweep, Inspect, Serve & export; English and Chinese. Each job runs
as the ``softprompt`` command it is (a subprocess whose log is kept); chat uses the Python API. Needs the
``webui`` extra (gradio).
"""
