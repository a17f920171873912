/*
 * fake_nvml.c - a FAKE libnvidia-ml.so.1 for tests on machines without a GPU.
 *
 * Loaded by the tests through nvml-wrapper's
 *     Nvml::builder().lib_path("/path/to/libnvidia-ml.so.1").init()
 * Built by tests/common/fake_nvml.rs; by hand:
 *     gcc -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -fvisibility=hidden \
 *         -Wl,-Bsymbolic -o libnvidia-ml.so.1 fake_nvml.c
 * Compile-time variant:
 *     -DFAKE_NVML_NO_MEMORY_V2  omit the nvmlDeviceGetMemoryInfo_v2 symbol entirely
 *                               (an old driver; only the v1 nvmlDeviceGetMemoryInfo).
 *
 * Default data for GPU index i (0-based):
 *     driver version      "550.54.15"     NVML version "12.550.54.15"
 *     CUDA driver version 12040
 *     name                "NVIDIA Fake H100 80GB HBM3"
 *     UUID                "GPU-00000000-0000-4000-8000-%012x" (i in hex, e.g. ...000000000001)
 *     temperature (GPU)   40 + i degrees C
 *     memory total        81559 MiB
 *            used         1024 * (i + 1) MiB
 *            reserved     512 MiB (v2 only)
 *            free         v2: total - used - reserved;  v1: total - used
 *     utilization         gpu = min(10 * (i + 1), 100) %, memory = min(5 * (i + 1), 100) %
 *     power               100000 + 1000 * i milliwatts
 *     compute processes   GPU 0: pid 4242 using 512 MiB; other GPUs: none
 *                         (gpuInstanceId / computeInstanceId = 0xFFFFFFFF, i.e. no MIG)
 *
 * Environment knobs, read with getenv() on every call (set them before calling):
 *     FAKE_NVML_GPU_COUNT=N        number of GPUs (default 2, 0 allowed, capped at 64)
 *     FAKE_NVML_INIT_FAIL=1        nvmlInit_v2 / nvmlInitWithFlags / nvmlInit return
 *                                  NVML_ERROR_DRIVER_NOT_LOADED (any value other than
 *                                  "" or "0" counts as set)
 *     FAKE_NVML_INIT_FAIL_FILE=P   init fails with NVML_ERROR_DRIVER_NOT_LOADED while the
 *                                  file P exists (simulates a driver that loads late)
 *     FAKE_NVML_LOST_GPU=i         device i's handle is returned normally, but every query
 *                                  on it returns NVML_ERROR_GPU_IS_LOST
 *     FAKE_NVML_UNSUPPORTED=a,b    comma list among temperature,power,utilization,
 *                                  processes,memory,name,uuid: those queries return
 *                                  NVML_ERROR_NOT_SUPPORTED on every GPU
 *     FAKE_NVML_PROCS="g:pid:mib;g:pid:mib"
 *                                  when set, replaces the default process list (entries
 *                                  are gpu index, pid, used MiB; malformed entries are
 *                                  ignored; empty string = no processes anywhere)
 *     FAKE_NVML_SLOW_MS=N          every nvmlDeviceGet* call sleeps N ms first
 *     FAKE_NVML_TEMP_BASE=N        replaces the temperature base of 40
 *     FAKE_NVML_KNOB_FILE=P        a knob file, re-read on EVERY call (so a test can change
 *                                  the GPUs' state while the agent runs; see below)
 *
 * Health defaults (knob-file keys in brackets, per GPU):
 *     ECC counts 0            [ecc.volatile.corrected, ecc.volatile.uncorrected,
 *                              ecc.aggregate.corrected, ecc.aggregate.uncorrected]
 *     retired pages pending 0 [retired_pages_pending]
 *     remapped rows 0/0, not pending, no failure
 *                             [remapped.corrected, remapped.uncorrected, remapped.pending,
 *                              remapped.failed]
 *     throttle reasons 0      [throttle] (a bitmask, decimal or 0x hex, as nvml.h's
 *                              nvmlClocksThrottleReason*: 0x8 HW slowdown, 0x10 sync boost,
 *                              0x20 SW thermal, 0x40 HW thermal, 0x80 HW power brake)
 *     PCIe gen 5 of 5, width 16 of 16 [pcie.gen, pcie.gen_max, pcie.width, pcie.width_max]
 *     fan 30 % (one fan)      [fan]
 *     clocks SM 1980, memory 2619 MHz (graphics = SM) [clock.sm, clock.mem]
 *     power limit 700000 mW   [power_limit_mw]
 *     performance state P0    [pstate]
 *     graphics processes none [procs.graphics]
 *     Xid events: supported (XidCriticalError and the ECC/pstate/clock bits)
 *
 * Knob file (FAKE_NVML_KNOB_FILE): lines `key = value`, `#` starts a comment line, a
 * missing file is the same as an empty one.  Per-GPU keys are written `gpu.<i>.<key>` or
 * `gpu.*.<key>` (every GPU; a `gpu.<i>.` line wins over a `gpu.*.` line, otherwise the last
 * line wins).  Besides the health keys above:
 *     gpu.<i>.lost = 1             like FAKE_NVML_LOST_GPU=i
 *     gpu.<i>.temperature = N      the GPU's temperature
 *     gpu.<i>.unsupported = a,b    features answering NVML_ERROR_NOT_SUPPORTED (added to
 *                                  FAKE_NVML_UNSUPPORTED): the names above plus ecc,
 *                                  retired_pages, remapped_rows, throttle, pcie, fan, clocks,
 *                                  power_limit, pstate, graphics_processes, events
 *     gpu.<i>.fail = a,b           features failing at run time with NVML_ERROR_UNKNOWN
 *     gpu.<i>.procs.compute = pid:mib,pid:mib
 *                                  the GPU's compute processes (wins over FAKE_NVML_PROCS;
 *                                  an empty value = none)
 *     gpu.<i>.procs.graphics = pid:mib,...   its graphics processes
 *     xid_events = g:xid,g:xid     global, in order: Xid events.  Each event set delivers, in
 *                                  order, every listed event of a GPU registered on it for
 *                                  XidCriticalError, from the start of the list (so append to
 *                                  inject one more; a set created later sees them all).
 *
  * Order of checks in a device query: not initialized -> NVML_ERROR_UNINITIALIZED;
 * bad handle / bad argument -> NVML_ERROR_INVALID_ARGUMENT; lost GPU ->
 * NVML_ERROR_GPU_IS_LOST; unsupported -> NVML_ERROR_NOT_SUPPORTED; failing ->
 * NVML_ERROR_UNKNOWN.
 *
 * Init is reference counted like the real library: every successful nvmlInit*
 * needs one nvmlShutdown; queries made while the count is 0 return
 * NVML_ERROR_UNINITIALIZED.  No static buffers, no dependency beyond libc.
 */

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

/* ---- NVML ABI subset (layouts as in nvml.h / nvml-wrapper-sys bindings) ---- */

typedef enum nvmlReturn_enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef enum nvmlTemperatureSensors_enum {
    NVML_TEMPERATURE_GPU = 0
} nvmlTemperatureSensors_t;

typedef struct nvmlDevice_st {
    unsigned int index;
} *nvmlDevice_t;

typedef struct nvmlMemory_st {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(data, ver) \
    (unsigned int)(sizeof(nvml##data##_v##ver##_t) | ((ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(Memory, 2)

typedef struct nvmlUtilization_st {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct nvmlProcessInfo_v1_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct nvmlProcessInfo_v2_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

/* nvml.h: nvmlProcessInfo_t is the v2 layout (used by _v3 and _v2 calls). */
typedef nvmlProcessInfo_v2_t nvmlProcessInfo_t;

typedef struct fake_event_set *nvmlEventSet_t;

typedef struct nvmlEventData_st {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

#define nvmlEventTypeSingleBitEccError 0x1ULL
#define nvmlEventTypeDoubleBitEccError 0x2ULL
#define nvmlEventTypePState 0x4ULL
#define nvmlEventTypeXidCriticalError 0x8ULL
#define nvmlEventTypeClock 0x10ULL

#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFU

/* ---- fake data ---- */

#define FAKE_MAX_GPUS 64U
#define FAKE_DEFAULT_GPU_COUNT 2U
#define MIB 1048576ULL
#define FAKE_TOTAL_MEM (81559ULL * MIB)
#define FAKE_RESERVED_MEM (512ULL * MIB)
#define FAKE_DRIVER_VERSION "550.54.15"
#define FAKE_NVML_VERSION "12.550.54.15"
#define FAKE_CUDA_DRIVER_VERSION 12040
#define FAKE_GPU_NAME "NVIDIA Fake H100 80GB HBM3"

/* Stable handles: device i is &fake_devices[i]; never modified after load. */
static struct nvmlDevice_st fake_devices[FAKE_MAX_GPUS] = {
#define D4(n) {(n)}, {(n) + 1}, {(n) + 2}, {(n) + 3}
#define D16(n) D4(n), D4((n) + 4), D4((n) + 8), D4((n) + 12)
    D16(0), D16(16), D16(32), D16(48)
#undef D16
#undef D4
};

static atomic_int init_refcount = 0;

enum feature {
    FEAT_TEMPERATURE,
    FEAT_POWER,
    FEAT_UTILIZATION,
    FEAT_PROCESSES,
    FEAT_MEMORY,
    FEAT_NAME,
    FEAT_UUID,
    FEAT_ECC,
    FEAT_RETIRED,
    FEAT_REMAP,
    FEAT_THROTTLE,
    FEAT_PCIE,
    FEAT_FAN,
    FEAT_CLOCKS,
    FEAT_POWER_LIMIT,
    FEAT_PSTATE,
    FEAT_GRAPHICS,
    FEAT_EVENTS
};

static const char *const feature_names[] = {
    [FEAT_TEMPERATURE] = "temperature",
    [FEAT_POWER] = "power",
    [FEAT_UTILIZATION] = "utilization",
    [FEAT_PROCESSES] = "processes",
    [FEAT_MEMORY] = "memory",
    [FEAT_NAME] = "name",
    [FEAT_UUID] = "uuid",
    [FEAT_ECC] = "ecc",
    [FEAT_RETIRED] = "retired_pages",
    [FEAT_REMAP] = "remapped_rows",
    [FEAT_THROTTLE] = "throttle",
    [FEAT_PCIE] = "pcie",
    [FEAT_FAN] = "fan",
    [FEAT_CLOCKS] = "clocks",
    [FEAT_POWER_LIMIT] = "power_limit",
    [FEAT_PSTATE] = "pstate",
    [FEAT_GRAPHICS] = "graphics_processes",
    [FEAT_EVENTS] = "events",
};

/* Parses a non-negative decimal; returns 0 and stores into *out on success. */
static int parse_ulong(const char *s, unsigned long *out)
{
    char *end = NULL;
    unsigned long v;

    if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static unsigned int gpu_count(void)
{
    unsigned long n;
    if (parse_ulong(getenv("FAKE_NVML_GPU_COUNT"), &n) != 0)
        return FAKE_DEFAULT_GPU_COUNT;
    return n > FAKE_MAX_GPUS ? FAKE_MAX_GPUS : (unsigned int)n;
}

/* ---- the knob file ---- */

#define KNOB_FILE_MAX 65536

static void trim(char **start, char **end)
{
    while (*start < *end && (**start == ' ' || **start == '\t' || **start == '\r'))
        (*start)++;
    while (*end > *start && ((*end)[-1] == ' ' || (*end)[-1] == '\t' || (*end)[-1] == '\r'))
        (*end)--;
}

/*
 * Looks `key` up in the knob file: with gpu >= 0 as `gpu.<gpu>.<key>` or `gpu.*.<key>`,
 * with gpu < 0 as `<key>`.  Copies the value into out (NUL-terminated, truncated to outlen)
 * and returns 1 when found, 0 otherwise.  Reads the whole file on every call.
 */
static int knob_get(const char *key, long gpu, char *out, size_t outlen)
{
    const char *path = getenv("FAKE_NVML_KNOB_FILE");
    FILE *f;
    char *buf;
    size_t n;
    char *line;
    int best = 0;
    char exact[96];
    char any[96];

    if (path == NULL || path[0] == '\0' || outlen == 0)
        return 0;
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    buf = malloc(KNOB_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        return 0;
    }
    n = fread(buf, 1, KNOB_FILE_MAX, f);
    fclose(f);
    buf[n] = '\0';
    if (gpu >= 0) {
        snprintf(exact, sizeof(exact), "gpu.%ld.%s", gpu, key);
        snprintf(any, sizeof(any), "gpu.*.%s", key);
    } else {
        snprintf(exact, sizeof(exact), "%s", key);
        any[0] = '\0';
    }
    line = buf;
    while (line != NULL && *line != '\0') {
        char *next = strchr(line, '\n');
        char *eq;
        char *ks, *ke, *vs, *ve;
        int rank = 0;
        if (next != NULL)
            *next++ = '\0';
        eq = strchr(line, '=');
        if (line[0] != '#' && eq != NULL) {
            ks = line;
            ke = eq;
            vs = eq + 1;
            ve = eq + strlen(eq);
            trim(&ks, &ke);
            trim(&vs, &ve);
            if ((size_t)(ke - ks) == strlen(exact) && strncmp(ks, exact, strlen(exact)) == 0)
                rank = 2;
            else if (any[0] != '\0' && (size_t)(ke - ks) == strlen(any) &&
                     strncmp(ks, any, strlen(any)) == 0)
                rank = 1;
            if (rank > 0 && rank >= best) {
                size_t len = (size_t)(ve - vs);
                if (len >= outlen)
                    len = outlen - 1;
                memcpy(out, vs, len);
                out[len] = '\0';
                best = rank;
            }
        }
        line = next;
    }
    free(buf);
    return best > 0;
}

/* A per-GPU number from the knob file (decimal or 0x hex), or `def`. */
static unsigned long long knob_num(const char *key, unsigned int gpu, unsigned long long def)
{
    char value[64];
    char *end = NULL;
    unsigned long long v;

    if (!knob_get(key, (long)gpu, value, sizeof(value)) || value[0] == '\0' || value[0] == '-')
        return def;
    errno = 0;
    v = strtoull(value, &end, 0);
    if (errno != 0 || end == value || *end != '\0')
        return def;
    return v;
}

/* True when the comma list `list` holds `want`. */
static int list_contains(const char *list, const char *want)
{
    size_t want_len = strlen(want);
    const char *p = list;

    if (list == NULL)
        return 0;
    while (*p != '\0') {
        const char *start;
        const char *end;
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        start = p;
        while (*p != '\0' && *p != ',')
            p++;
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - start) == want_len && strncmp(start, want, want_len) == 0)
            return 1;
    }
    return 0;
}

static int knob_list_contains(const char *key, unsigned int gpu, const char *want)
{
    char value[512];
    return knob_get(key, (long)gpu, value, sizeof(value)) && list_contains(value, want);
}

static int is_lost(unsigned int index)
{
    unsigned long lost;
    if (knob_num("lost", index, 0) != 0)
        return 1;
    if (parse_ulong(getenv("FAKE_NVML_LOST_GPU"), &lost) != 0)
        return 0;
    return lost == index;
}

static int is_unsupported(enum feature f, unsigned int gpu)
{
    return list_contains(getenv("FAKE_NVML_UNSUPPORTED"), feature_names[f]) ||
           knob_list_contains("unsupported", gpu, feature_names[f]);
}

static int is_failing(enum feature f, unsigned int gpu)
{
    return knob_list_contains("fail", gpu, feature_names[f]);
}

static void maybe_sleep(void)
{
    unsigned long ms;
    struct timespec ts;

    if (parse_ulong(getenv("FAKE_NVML_SLOW_MS"), &ms) != 0 || ms == 0)
        return;
    ts.tv_sec = (time_t)(ms / 1000UL);
    ts.tv_nsec = (long)(ms % 1000UL) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int initialized(void)
{
    return atomic_load(&init_refcount) > 0;
}

/* Maps a handle to its index; -1 if it is not a currently valid device. */
static long handle_index(nvmlDevice_t device)
{
    uintptr_t base = (uintptr_t)&fake_devices[0];
    uintptr_t p = (uintptr_t)device;
    uintptr_t off;

    if (device == NULL || p < base)
        return -1;
    off = p - base;
    if (off % sizeof(fake_devices[0]) != 0)
        return -1;
    off /= sizeof(fake_devices[0]);
    if (off >= gpu_count())
        return -1;
    return (long)off;
}

/*
 * Common prologue of every per-device query: sleeps, checks init, the handle,
 * the lost GPU and the unsupported feature.  feature < 0: no unsupported check.
 */
static nvmlReturn_t device_check(nvmlDevice_t device, int feature, unsigned int *index)
{
    long idx;

    maybe_sleep();
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    idx = handle_index(device);
    if (idx < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (is_lost((unsigned int)idx))
        return NVML_ERROR_GPU_IS_LOST;
    if (feature >= 0 && is_unsupported((enum feature)feature, (unsigned int)idx))
        return NVML_ERROR_NOT_SUPPORTED;
    if (feature >= 0 && is_failing((enum feature)feature, (unsigned int)idx))
        return NVML_ERROR_UNKNOWN;
    *index = (unsigned int)idx;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *src, char *dst, unsigned int length)
{
    size_t n = strlen(src);
    if (dst == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((size_t)length < n + 1)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

static void format_uuid(unsigned int index, char buf[64])
{
    snprintf(buf, 64, "GPU-00000000-0000-4000-8000-%012x", index);
}

/* ---- processes ---- */

struct fake_proc {
    unsigned int gpu;
    unsigned int pid;
    unsigned long long used_bytes;
};

/*
 * Calls visit(ctx, proc) for each process of GPU `gpu`; returns how many.
 * Parses FAKE_NVML_PROCS on every call (no shared state).
 */
typedef void (*proc_visitor)(void *ctx, unsigned int n, const struct fake_proc *p);

enum proc_kind { PROCS_COMPUTE, PROCS_GRAPHICS };

/* The knob file's `pid:mib,pid:mib` list of GPU `gpu`; malformed entries are skipped. */
static unsigned int for_each_knob_proc(unsigned int gpu, const char *list, proc_visitor visit,
                                       void *ctx)
{
    unsigned int n = 0;
    const char *p = list;

    while (*p != '\0') {
        char entry[64];
        const char *start;
        size_t len;
        char *colon;
        unsigned long pid, mib;
        while (*p == ',' || *p == ';' || *p == ' ' || *p == '\t')
            p++;
        start = p;
        while (*p != '\0' && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        len = (size_t)(p - start);
        if (len == 0 || len >= sizeof(entry))
            continue;
        memcpy(entry, start, len);
        entry[len] = '\0';
        colon = strchr(entry, ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        if (parse_ulong(entry, &pid) != 0 || parse_ulong(colon + 1, &mib) != 0 ||
            pid > 0xFFFFFFFFUL)
            continue;
        {
            struct fake_proc fp;
            fp.gpu = gpu;
            fp.pid = (unsigned int)pid;
            fp.used_bytes = (unsigned long long)mib * MIB;
            if (visit != NULL)
                visit(ctx, n, &fp);
            n++;
        }
    }
    return n;
}

static unsigned int for_each_proc(unsigned int gpu, enum proc_kind kind, proc_visitor visit,
                                  void *ctx)
{
    const char *spec = getenv("FAKE_NVML_PROCS");
    unsigned int n = 0;
    const char *p;
    char knob[4096];

    if (knob_get(kind == PROCS_COMPUTE ? "procs.compute" : "procs.graphics", (long)gpu, knob,
                 sizeof(knob)))
        return for_each_knob_proc(gpu, knob, visit, ctx);
    if (kind == PROCS_GRAPHICS)
        return 0;
    if (spec == NULL) {
        if (gpu == 0) {
            struct fake_proc def = {0, 4242, 512ULL * MIB};
            if (visit != NULL)
                visit(ctx, n, &def);
            n++;
        }
        return n;
    }

    p = spec;
    while (*p != '\0') {
        char entry[128];
        const char *start = p;
        size_t len;
        unsigned long fields[3];
        int nfields = 0;
        int ok = 1;
        char *cur;

        while (*p != '\0' && *p != ';')
            p++;
        len = (size_t)(p - start);
        if (*p == ';')
            p++;
        if (len == 0 || len >= sizeof(entry))
            continue;
        memcpy(entry, start, len);
        entry[len] = '\0';

        /* exactly three ':'-separated decimal fields */
        cur = entry;
        while (ok && nfields < 3) {
            char *colon = strchr(cur, ':');
            if (colon != NULL)
                *colon = '\0';
            if (parse_ulong(cur, &fields[nfields]) != 0)
                ok = 0;
            nfields++;
            if (colon == NULL)
                break;
            if (nfields == 3)
                ok = 0; /* a fourth field */
            cur = colon + 1;
        }
        if (!ok || nfields != 3)
            continue;
        if (fields[0] != gpu || fields[1] > 0xFFFFFFFFUL)
            continue;
        {
            struct fake_proc fp;
            fp.gpu = gpu;
            fp.pid = (unsigned int)fields[1];
            fp.used_bytes = (unsigned long long)fields[2] * MIB;
            if (visit != NULL)
                visit(ctx, n, &fp);
            n++;
        }
    }
    return n;
}

static void fill_v2(void *ctx, unsigned int n, const struct fake_proc *p)
{
    nvmlProcessInfo_v2_t *infos = ctx;
    infos[n].pid = p->pid;
    infos[n].usedGpuMemory = p->used_bytes;
    infos[n].gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
    infos[n].computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
}

static void fill_v1(void *ctx, unsigned int n, const struct fake_proc *p)
{
    nvmlProcessInfo_v1_t *infos = ctx;
    infos[n].pid = p->pid;
    infos[n].usedGpuMemory = p->used_bytes;
}

/*
 * NVML's count protocol: *infoCount is the capacity of infos on input and the
 * number of processes on output.  Capacity too small (including 0 / NULL
 * buffer for a count query) -> NVML_ERROR_INSUFFICIENT_SIZE with the needed
 * count; no processes -> NVML_SUCCESS with *infoCount = 0.
 */
static nvmlReturn_t get_processes(nvmlDevice_t device, enum proc_kind kind,
                                  unsigned int *infoCount, void *infos, proc_visitor fill)
{
    unsigned int index = 0;
    unsigned int needed;
    nvmlReturn_t rc = device_check(device, kind == PROCS_COMPUTE ? FEAT_PROCESSES : FEAT_GRAPHICS,
                                   &index);

    if (rc != NVML_SUCCESS)
        return rc;
    if (infoCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    needed = for_each_proc(index, kind, NULL, NULL);
    if (*infoCount < needed) {
        *infoCount = needed;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (needed > 0 && infos == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (needed > 0)
        for_each_proc(index, kind, fill, infos);
    *infoCount = needed;
    return NVML_SUCCESS;
}

/* ---- exported API ---- */

static nvmlReturn_t do_init(void)
{
    const char *fail_file = getenv("FAKE_NVML_INIT_FAIL_FILE");

    if (env_flag("FAKE_NVML_INIT_FAIL"))
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (fail_file != NULL && fail_file[0] != '\0' && access(fail_file, F_OK) == 0)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    atomic_fetch_add(&init_refcount, 1);
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return do_init();
}

FAKE_EXPORT nvmlReturn_t nvmlInit(void)
{
    return do_init();
}

FAKE_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return do_init();
}

FAKE_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    int cur = atomic_load(&init_refcount);
    while (cur > 0) {
        if (atomic_compare_exchange_weak(&init_refcount, &cur, cur - 1))
            return NVML_SUCCESS;
    }
    return NVML_ERROR_UNINITIALIZED;
}

FAKE_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    default: return "Unknown Error";
    }
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    return copy_string(FAKE_DRIVER_VERSION, version, length);
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    /* The real library answers this one without init. */
    return copy_string(FAKE_NVML_VERSION, version, length);
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = FAKE_CUDA_DRIVER_VERSION;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = FAKE_CUDA_DRIVER_VERSION;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_count(unsigned int *deviceCount)
{
    maybe_sleep();
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (deviceCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = gpu_count();
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    return get_count(deviceCount);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return get_count(deviceCount);
}

static nvmlReturn_t get_handle_by_index(unsigned int index, nvmlDevice_t *device)
{
    maybe_sleep();
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= gpu_count())
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &fake_devices[index];
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    return get_handle_by_index(index, device);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return get_handle_by_index(index, device);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    unsigned int i;
    unsigned int count;

    maybe_sleep();
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    count = gpu_count();
    for (i = 0; i < count; i++) {
        char buf[64];
        format_uuid(i, buf);
        if (strcmp(buf, uuid) == 0) {
            *device = &fake_devices[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, -1, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (index == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = idx;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_NAME, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    return copy_string(FAKE_GPU_NAME, name, length);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    unsigned int idx = 0;
    char buf[64];
    nvmlReturn_t rc = device_check(device, FEAT_UUID, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    format_uuid(idx, buf);
    return copy_string(buf, uuid, length);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device,
                                                  nvmlTemperatureSensors_t sensorType,
                                                  unsigned int *temp)
{
    unsigned int idx = 0;
    unsigned long base;
    nvmlReturn_t rc = device_check(device, FEAT_TEMPERATURE, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (temp == NULL || sensorType != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (parse_ulong(getenv("FAKE_NVML_TEMP_BASE"), &base) != 0 || base > 1000UL)
        base = 40;
    *temp = (unsigned int)knob_num("temperature", idx, (unsigned long long)base + idx);
    return NVML_SUCCESS;
}

static unsigned long long used_bytes(unsigned int idx)
{
    return 1024ULL * (idx + 1ULL) * MIB;
}

#ifndef FAKE_NVML_NO_MEMORY_V2
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_MEMORY, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = FAKE_TOTAL_MEM;
    memory->used = used_bytes(idx);
    memory->reserved = FAKE_RESERVED_MEM;
    memory->free = FAKE_TOTAL_MEM - memory->used - FAKE_RESERVED_MEM;
    return NVML_SUCCESS;
}
#endif

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_MEMORY, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = FAKE_TOTAL_MEM;
    memory->used = used_bytes(idx);
    memory->free = FAKE_TOTAL_MEM - memory->used;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device,
                                                       nvmlUtilization_t *utilization)
{
    unsigned int idx = 0;
    unsigned int gpu;
    unsigned int mem;
    nvmlReturn_t rc = device_check(device, FEAT_UTILIZATION, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (utilization == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    gpu = 10U * (idx + 1U);
    mem = 5U * (idx + 1U);
    utilization->gpu = gpu > 100U ? 100U : gpu;
    utilization->memory = mem > 100U ? 100U : mem;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_POWER, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (power == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *power = 100000U + 1000U * idx;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                                 unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos)
{
    return get_processes(device, PROCS_COMPUTE, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                                 unsigned int *infoCount,
                                                                 nvmlProcessInfo_v2_t *infos)
{
    return get_processes(device, PROCS_COMPUTE, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                              unsigned int *infoCount,
                                                              nvmlProcessInfo_v1_t *infos)
{
    return get_processes(device, PROCS_COMPUTE, infoCount, infos, fill_v1);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device,
                                                                  unsigned int *infoCount,
                                                                  nvmlProcessInfo_t *infos)
{
    return get_processes(device, PROCS_GRAPHICS, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device,
                                                                  unsigned int *infoCount,
                                                                  nvmlProcessInfo_v2_t *infos)
{
    return get_processes(device, PROCS_GRAPHICS, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device,
                                                               unsigned int *infoCount,
                                                               nvmlProcessInfo_v1_t *infos)
{
    return get_processes(device, PROCS_GRAPHICS, infoCount, infos, fill_v1);
}

/* ---- health: ECC, retired pages, remapped rows, throttling, PCIe, fan, clocks, power ---- */

/* Runs the common checks of feature `f`, then stores `value` (clamped to unsigned int). */
static nvmlReturn_t get_uint(nvmlDevice_t device, enum feature f, const char *key,
                             unsigned long long def, unsigned int *out)
{
    unsigned int idx = 0;
    unsigned long long v;
    nvmlReturn_t rc = device_check(device, (int)f, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (out == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    v = knob_num(key, idx, def);
    *out = v > 0xFFFFFFFFULL ? 0xFFFFFFFFU : (unsigned int)v;
    return NVML_SUCCESS;
}

/* errorType: 0 corrected, 1 uncorrected; counterType: 0 volatile, 1 aggregate. */
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType,
                                                    int counterType,
                                                    unsigned long long *eccCounts)
{
    unsigned int idx = 0;
    char key[64];
    nvmlReturn_t rc = device_check(device, FEAT_ECC, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (eccCounts == NULL || errorType < 0 || errorType > 1 || counterType < 0 ||
        counterType > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(key, sizeof(key), "ecc.%s.%s", counterType == 0 ? "volatile" : "aggregate",
             errorType == 0 ? "corrected" : "uncorrected");
    *eccCounts = knob_num(key, idx, 0);
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                               int *isPending)
{
    unsigned int v = 0;
    nvmlReturn_t rc = get_uint(device, FEAT_RETIRED, "retired_pages_pending", 0, &v);
    if (rc != NVML_SUCCESS)
        return rc;
    if (isPending == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *isPending = v != 0;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                                   unsigned int *uncRows,
                                                   unsigned int *isPending,
                                                   unsigned int *failureOccurred)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_REMAP, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *corrRows = (unsigned int)knob_num("remapped.corrected", idx, 0);
    *uncRows = (unsigned int)knob_num("remapped.uncorrected", idx, 0);
    *isPending = knob_num("remapped.pending", idx, 0) != 0;
    *failureOccurred = knob_num("remapped.failed", idx, 0) != 0;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_throttle(nvmlDevice_t device, unsigned long long *reasons)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_THROTTLE, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (reasons == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *reasons = knob_num("throttle", idx, 0);
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                                  unsigned long long *reasons)
{
    return get_throttle(device, reasons);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                               unsigned long long *reasons)
{
    return get_throttle(device, reasons);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device,
                                                            unsigned int *gen)
{
    return get_uint(device, FEAT_PCIE, "pcie.gen", 5, gen);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t device,
                                                           unsigned int *gen)
{
    return get_uint(device, FEAT_PCIE, "pcie.gen_max", 5, gen);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width)
{
    return get_uint(device, FEAT_PCIE, "pcie.width", 16, width);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *width)
{
    return get_uint(device, FEAT_PCIE, "pcie.width_max", 16, width);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *numFans)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_FAN, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (numFans == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *numFans = 1;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan,
                                                  unsigned int *speed)
{
    if (fan != 0) {
        unsigned int idx = 0;
        nvmlReturn_t rc = device_check(device, FEAT_FAN, &idx);
        return rc != NVML_SUCCESS ? rc : NVML_ERROR_INVALID_ARGUMENT;
    }
    return get_uint(device, FEAT_FAN, "fan", 30, speed);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    return get_uint(device, FEAT_FAN, "fan", 30, speed);
}

/* type: 0 graphics, 1 SM, 2 memory, 3 video. */
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type,
                                                unsigned int *clock)
{
    switch (type) {
    case 0:
    case 1:
        return get_uint(device, FEAT_CLOCKS, "clock.sm", 1980, clock);
    case 2:
        return get_uint(device, FEAT_CLOCKS, "clock.mem", 2619, clock);
    case 3:
        return get_uint(device, FEAT_CLOCKS, "clock.video", 1755, clock);
    default: {
        unsigned int idx = 0;
        nvmlReturn_t rc = device_check(device, FEAT_CLOCKS, &idx);
        return rc != NVML_SUCCESS ? rc : NVML_ERROR_INVALID_ARGUMENT;
    }
    }
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return get_uint(device, FEAT_POWER_LIMIT, "power_limit_mw", 700000, limit);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device,
                                                          unsigned int *limit)
{
    return get_uint(device, FEAT_POWER_LIMIT, "power_limit_mw", 700000, limit);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, int *pState)
{
    unsigned int v = 0;
    nvmlReturn_t rc = get_uint(device, FEAT_PSTATE, "pstate", 0, &v);
    if (rc != NVML_SUCCESS)
        return rc;
    if (pState == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *pState = v > 15U ? 32 : (int)v;
    return NVML_SUCCESS;
}

/* ---- events ---- */

#define FAKE_EVENT_SET_MAGIC 0x45564e54U
#define FAKE_SUPPORTED_EVENTS                                                                  \
    (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypePState |  \
     nvmlEventTypeXidCriticalError | nvmlEventTypeClock)

struct fake_event_set {
    unsigned int magic;
    /* Bit i: GPU i is registered for Xid events on this set. */
    atomic_ullong xid_gpus;
    /* Index in `xid_events` of the next event to look at. */
    atomic_uint cursor;
};

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                                         unsigned long long *eventTypes)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_EVENTS, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (eventTypes == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = FAKE_SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    struct fake_event_set *s;
    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    s = malloc(sizeof(*s));
    if (s == NULL)
        return NVML_ERROR_MEMORY;
    s->magic = FAKE_EVENT_SET_MAGIC;
    atomic_init(&s->xid_gpus, 0ULL);
    atomic_init(&s->cursor, 0U);
    *set = s;
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    if (set == NULL || set->magic != FAKE_EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    set->magic = 0;
    free(set);
    return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device,
                                                  unsigned long long eventTypes,
                                                  nvmlEventSet_t set)
{
    unsigned int idx = 0;
    nvmlReturn_t rc = device_check(device, FEAT_EVENTS, &idx);
    if (rc != NVML_SUCCESS)
        return rc;
    if (set == NULL || set->magic != FAKE_EVENT_SET_MAGIC)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((eventTypes & ~FAKE_SUPPORTED_EVENTS) != 0)
        return NVML_ERROR_NOT_SUPPORTED;
    if (eventTypes & nvmlEventTypeXidCriticalError)
        atomic_fetch_or(&set->xid_gpus, 1ULL << idx);
    return NVML_SUCCESS;
}

/*
 * The `n`-th entry of the `xid_events` list: 1 and (gpu, xid) when it exists, 0 past the end.
 * A malformed entry counts as an entry with gpu = FAKE_MAX_GPUS (never delivered).
 */
static int xid_event_at(unsigned int n, unsigned int *gpu, unsigned long long *xid)
{
    char list[4096];
    const char *p = list;
    unsigned int i = 0;

    if (!knob_get("xid_events", -1, list, sizeof(list)))
        return 0;
    while (*p != '\0') {
        char entry[64];
        const char *start;
        size_t len;
        while (*p == ',' || *p == ';' || *p == ' ' || *p == '\t')
            p++;
        start = p;
        while (*p != '\0' && *p != ',' && *p != ';' && *p != ' ' && *p != '\t')
            p++;
        len = (size_t)(p - start);
        if (len == 0)
            continue;
        if (i++ != n)
            continue;
        *gpu = FAKE_MAX_GPUS;
        *xid = 0;
        if (len < sizeof(entry)) {
            char *colon;
            unsigned long g, x;
            memcpy(entry, start, len);
            entry[len] = '\0';
            colon = strchr(entry, ':');
            if (colon != NULL) {
                *colon = '\0';
                if (parse_ulong(entry, &g) == 0 && parse_ulong(colon + 1, &x) == 0) {
                    *gpu = (unsigned int)(g < FAKE_MAX_GPUS ? g : FAKE_MAX_GPUS);
                    *xid = x;
                }
            }
        }
        return 1;
    }
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000L;
}

FAKE_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                             unsigned int timeoutms)
{
    long long deadline = now_ms() + (long long)timeoutms;

    if (!initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (set == NULL || set->magic != FAKE_EVENT_SET_MAGIC || data == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (;;) {
        unsigned int gpu;
        unsigned long long xid;
        unsigned int n = atomic_load(&set->cursor);
        long long left;
        while (xid_event_at(n, &gpu, &xid)) {
            n++;
            atomic_store(&set->cursor, n);
            if (gpu < FAKE_MAX_GPUS && gpu < gpu_count() &&
                (atomic_load(&set->xid_gpus) & (1ULL << gpu)) != 0) {
                data->device = &fake_devices[gpu];
                data->eventType = nvmlEventTypeXidCriticalError;
                data->eventData = xid;
                data->gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
                data->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
                return NVML_SUCCESS;
            }
        }
        left = deadline - now_ms();
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        {
            /* Events come only from the knob file: without one, none can arrive, and the wait
             * sleeps its whole timeout at once, like the real library blocking in the driver
             * (so the agent's idle CPU time is not the fake's polling). */
            const char *knobs = getenv("FAKE_NVML_KNOB_FILE");
            long long step = (knobs == NULL || *knobs == '\0') ? left : (left < 10 ? left : 10);
            struct timespec ts = {(time_t)(step / 1000), (long)(step % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}
