#!/usr/bin/env python3
"""A Keel external worker in Python, standard library only (J9).

It long-polls a queue for jobs, keeps each job's lease alive with heartbeats while it works,
and reports the result (or the error) with the attempt number it was given: if its lease was
taken over meanwhile, Keel answers 409 lease_lost and the result is dropped.

    python3 worker.py --url http://127.0.0.1:8080 --token kw_... --queue pdf [--once]

The work itself is `handle()`: here it returns the payload's words counted, and fails on a
payload with "fail": true so that retries can be seen.
"""

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def call(base, token, path, body):
    request = urllib.request.Request(
        base + "/api/v1" + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=70) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def handle(job):
    payload = job.get("payload") or {}
    if payload.get("fail"):
        raise RuntimeError("the payload asked to fail")
    time.sleep(float(payload.get("seconds", 0)))
    text = str(payload.get("text", ""))
    return {"words": len(text.split()), "worker": "python"}


def heartbeat(base, token, job, stop):
    every = max(job["lease_ms"] / 3000.0, 0.2)
    while not stop.wait(every):
        status, _ = call(base, token, f"/workers/jobs/{job['id']}/heartbeat", {"attempt": job["attempt"]})
        if status == 409:
            print(f"job {job['id']}: lease lost", file=sys.stderr)
            return


def work_one(base, token, job):
    stop = threading.Event()
    beats = threading.Thread(target=heartbeat, args=(base, token, job, stop), daemon=True)
    beats.start()
    try:
        result = handle(job)
        status, body = call(base, token, f"/workers/jobs/{job['id']}/complete", {"attempt": job["attempt"], "result": result})
    except Exception as error:  # the job failed: report it, Keel decides about retries
        status, body = call(base, token, f"/workers/jobs/{job['id']}/fail", {"attempt": job["attempt"], "error": str(error)})
    finally:
        stop.set()
    print(json.dumps({"job": job["id"], "attempt": job["attempt"], "status": status, "answer": body}), flush=True)
    return status


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--name", default="python-1")
    parser.add_argument("--once", action="store_true", help="stop after one job")
    parser.add_argument("--wait-ms", type=int, default=20000)
    args = parser.parse_args()
    while True:
        status, body = call(args.url, args.token, "/workers/claim",
                            {"queue": args.queue, "worker": args.name, "limit": 1, "wait_ms": args.wait_ms})
        if status != 200:
            print(f"claim failed: {status} {body}", file=sys.stderr)
            return 1
        for job in body["items"]:
            work_one(args.url, args.token, job)
            if args.once:
                return 0


if __name__ == "__main__":
    sys.exit(main())
