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
 *
 * Order of checks in a device query: not initialized -> NVML_ERROR_UNINITIALIZED;
 * bad handle / bad argument -> NVML_ERROR_INVALID_ARGUMENT; lost GPU ->
 * NVML_ERROR_GPU_IS_LOST; unsupported -> NVML_ERROR_NOT_SUPPORTED.
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
    FEAT_UUID
};

static const char *const feature_names[] = {
    [FEAT_TEMPERATURE] = "temperature",
    [FEAT_POWER] = "power",
    [FEAT_UTILIZATION] = "utilization",
    [FEAT_PROCESSES] = "processes",
    [FEAT_MEMORY] = "memory",
    [FEAT_NAME] = "name",
    [FEAT_UUID] = "uuid",
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

static int is_lost(unsigned int index)
{
    unsigned long lost;
    if (parse_ulong(getenv("FAKE_NVML_LOST_GPU"), &lost) != 0)
        return 0;
    return lost == index;
}

static int is_unsupported(enum feature f)
{
    const char *list = getenv("FAKE_NVML_UNSUPPORTED");
    const char *want = feature_names[f];
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
    if (feature >= 0 && is_unsupported((enum feature)feature))
        return NVML_ERROR_NOT_SUPPORTED;
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

static unsigned int for_each_proc(unsigned int gpu, proc_visitor visit, void *ctx)
{
    const char *spec = getenv("FAKE_NVML_PROCS");
    unsigned int n = 0;
    const char *p;

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
static nvmlReturn_t get_processes(nvmlDevice_t device, unsigned int *infoCount, void *infos,
                                  proc_visitor fill)
{
    unsigned int index = 0;
    unsigned int needed;
    nvmlReturn_t rc = device_check(device, FEAT_PROCESSES, &index);

    if (rc != NVML_SUCCESS)
        return rc;
    if (infoCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    needed = for_each_proc(index, NULL, NULL);
    if (*infoCount < needed) {
        *infoCount = needed;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (needed > 0 && infos == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (needed > 0)
        for_each_proc(index, fill, infos);
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
    *temp = (unsigned int)base + idx;
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
    return get_processes(device, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                                 unsigned int *infoCount,
                                                                 nvmlProcessInfo_v2_t *infos)
{
    return get_processes(device, infoCount, infos, fill_v2);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                              unsigned int *infoCount,
                                                              nvmlProcessInfo_v1_t *infos)
{
    return get_processes(device, infoCount, infos, fill_v1);
}
