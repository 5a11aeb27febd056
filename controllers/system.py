"""CPU, memory and disk statistics, refreshed on a period.

Three controllers, so three processes: a disk that hangs ``statvfs`` (a dead
NFS server) stalls only the disk statistics, and the supervisor notices
that controller alone stopped answering.

- CPUStats (id ``cpu``), MemoryStats (ids ``memory`` and ``swap``) and
  DiskStats (id = mount point) in namespace ``system``, from psutil.
"""

from __future__ import annotations

import os

import psutil

from cosihost import Controller, Output, ResourceDefinition

NAMESPACE = "system"
CPU = "CPUStats.system.cosihost.dev"
MEMORY = "MemoryStats.system.cosihost.dev"
DISKS = "DiskStats.system.cosihost.dev"


class CPUStatsController(Controller):
    name = "system.CPUStatsController"
    outputs = [Output(CPU, kind="exclusive")]
    definitions = [
        ResourceDefinition(CPU, aliases=("cpustat", "cpustats", "cpu"), default_namespace=NAMESPACE,
                           print_columns=(("CPUS", "logical"), ("PERCENT", "percent"), ("LOAD 1M", "load.0"),
                                          ("LOAD 5M", "load.1"), ("LOAD 15M", "load.2"))),
    ]
    period = 10.0

    primed = False

    def reconcile(self, rt) -> None:
        # Usage is measured between two calls: the first one has nothing to
        # compare with, so the first round reports no percentages.
        per_cpu = psutil.cpu_percent(percpu=True)
        measured = self.primed and bool(per_cpu)
        self.primed = True
        freq = psutil.cpu_freq()
        spec = {
            "logical": psutil.cpu_count(logical=True),
            "physical": psutil.cpu_count(logical=False),
            "percent": round(sum(per_cpu) / len(per_cpu), 1) if measured else None,
            "per_cpu_percent": per_cpu if measured else None,
            "load": [round(x, 2) for x in os.getloadavg()],
            "frequency_mhz": round(freq.current) if freq else None,
        }
        rt.modify(NAMESPACE, CPU, "cpu", lambda s: s.update(spec))
        rt.requeue(after=self.period)


class MemoryStatsController(Controller):
    name = "system.MemoryStatsController"
    outputs = [Output(MEMORY, kind="exclusive")]
    definitions = [
        ResourceDefinition(MEMORY, aliases=("memorystat", "memorystats", "memory", "mem"),
                           default_namespace=NAMESPACE,
                           print_columns=(("TOTAL", "total", "bytes"), ("USED", "used", "bytes"),
                                          ("AVAILABLE", "available", "bytes"), ("PERCENT", "percent"))),
    ]
    period = 10.0

    def reconcile(self, rt) -> None:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        memory = {"total": vm.total, "available": vm.available, "used": vm.used, "free": vm.free,
                  "percent": vm.percent,
                  "buffers": getattr(vm, "buffers", None), "cached": getattr(vm, "cached", None)}
        swapped = {"total": swap.total, "used": swap.used, "free": swap.free, "percent": swap.percent,
                   "available": swap.free}
        rt.modify(NAMESPACE, MEMORY, "memory", lambda s: s.update(memory))
        rt.modify(NAMESPACE, MEMORY, "swap", lambda s: s.update(swapped))
        rt.requeue(after=self.period)


class DiskStatsController(Controller):
    name = "system.DiskStatsController"
    outputs = [Output(DISKS, kind="exclusive")]
    definitions = [
        ResourceDefinition(DISKS, aliases=("diskstat", "diskstats", "disks", "df"), default_namespace=NAMESPACE,
                           print_columns=(("DEVICE", "device"), ("FSTYPE", "fstype"), ("TOTAL", "total", "bytes"),
                                          ("USED", "used", "bytes"), ("PERCENT", "percent"))),
    ]
    period = 30.0

    def reconcile(self, rt) -> None:
        rt.start_tracking_outputs()
        for part in psutil.disk_partitions(all=False):
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue  # gone meanwhile, or not ours to look at
            spec = {"device": part.device, "fstype": part.fstype, "options": part.opts.split(","),
                    "total": usage.total, "used": usage.used, "free": usage.free, "percent": usage.percent}
            rt.modify(NAMESPACE, DISKS, part.mountpoint, lambda s, spec=spec: s.update(spec))
        rt.cleanup_outputs()  # unmounted since the last round
        rt.requeue(after=self.period)
