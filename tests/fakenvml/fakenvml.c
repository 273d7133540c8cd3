/*
 * fakenvml.c: a stand-in libnvidia-ml.so.1 for tests on machines without a GPU.
 *
 * The real nvidia-ml-py bindings (pynvml) load it unmodified and see simulated
 * GPUs.  State comes from the text file named by $FAKE_NVML_STATE, re-read
 * whenever its path, inode, size or mtime changes (tests/fakenvml/__init__.py
 * writes it; the format is documented there).  A missing file at init time
 * means "no driver": nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED.
 *
 * Build: gcc -O2 -Wall -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 \
 *            -o libnvidia-ml.so.1 fakenvml.c -lpthread
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

typedef enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NOT_FOUND = 6, NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9, NVML_ERROR_GPU_IS_LOST = 15, NVML_ERROR_MEMORY = 20,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25, NVML_ERROR_UNKNOWN = 999,
} nvmlReturn_t;

#define MAX_GPUS 64
#define NOT_AVAILABLE_U32 0xFFFFFFFFu
#define NOT_AVAILABLE_U64 0xFFFFFFFFFFFFFFFFull
#define TOPOLOGY_INTERNAL 0
#define TOPOLOGY_SYSTEM 50

/* Structs laid out exactly as pynvml declares them. */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 (sizeof(nvmlMemory_v2_t) | (2u << 24))
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t; /* the v2 and v3 layouts are the same */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
    unsigned long long timeStamp;
    unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil, ofaUtil;
} nvmlProcessUtilizationInfo_v1_t;
typedef struct {
    unsigned int version, processSamplesCount;
    unsigned long long lastSeenTimeStamp;
    nvmlProcessUtilizationInfo_v1_t *procUtilArray;
} nvmlProcessesUtilizationInfo_t;
#define nvmlProcessesUtilizationInfo_v1 (sizeof(nvmlProcessesUtilizationInfo_t) | (1u << 24))
typedef struct { unsigned int version; int sensorType; int temperature; } nvmlTemperature_t;
#define nvmlTemperature_v1 (sizeof(nvmlTemperature_t) | (1u << 24))

struct gpu {
    char uuid[96], name[96], busId[32], unsupported[512];
    unsigned int domain, bus, device, pci_device_id, minor, util, memory_util, power_mw,
        temperature, lost, retired_pending, cc_major, cc_minor, gpm,
        process_list_growth; /* processes that appear between a count call and a list call */
    unsigned long long memory_total, memory_used, memory_reserved, ecc[2], energy_mj;
    double sm_activity; /* what nvmlGpmMetricsGet gives for NVML_GPM_METRIC_SM_UTIL */
};
typedef struct gpu *nvmlDevice_t;
struct proc { unsigned int gpu, pid, gi, ci; unsigned long long used; };
struct sample { unsigned int gpu, pid, sm, mem, enc, dec; unsigned long long ts; };

struct state {
    char driver[80], nvml_version[80];
    int cuda;
    unsigned int ngpus, nprocs, nsamples, cap_procs, cap_samples;
    struct gpu gpus[MAX_GPUS];
    unsigned char topology[MAX_GPUS][MAX_GPUS]; /* level + 1; 0 = not given */
    struct proc *procs;
    struct sample *samples;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct state cur, next; /* handles point into cur.gpus */
static int refcount;
static struct { char path[4096]; struct stat st; } seen;

/* ---- state file ---------------------------------------------------------- */

static int parse_u64(const char *s, unsigned long long *out)
{
    char *end;
    if (!*s || *s == '-') return -1;
    errno = 0;
    *out = strtoull(s, &end, 0);
    return (errno || *end) ? -1 : 0;
}

static int parse_u32(const char *s, unsigned int *out)
{
    unsigned long long v;
    if (parse_u64(s, &v) || v > 0xFFFFFFFFull) return -1;
    *out = (unsigned int)v;
    return 0;
}

static int copy_str(char *dst, size_t size, const char *src)
{
    if (strlen(src) >= size) return -1;
    strcpy(dst, src);
    return 0;
}

static int set_pci(struct gpu *g, const char *s)
{
    int n = 0;
    if (sscanf(s, "%x:%x:%x.0%n", &g->domain, &g->bus, &g->device, &n) != 3 || s[n]) return -1;
    snprintf(g->busId, sizeof g->busId, "%08X:%02X:%02X.0", g->domain, g->bus, g->device);
    return 0;
}

static void *grow(void *arr, unsigned int *cap, size_t elem)
{
    unsigned int ncap = *cap ? *cap * 2 : 64;
    void *p = realloc(arr, ncap * elem);
    if (p) *cap = ncap;
    return p;
}

/* "gpu <i> <key> <value...>" */
static int parse_gpu_line(struct state *s, const char *line)
{
    unsigned int i;
    char key[64];
    int off = 0;
    if (sscanf(line, "gpu %u %63s %n", &i, key, &off) != 2 || !off || i >= MAX_GPUS) return -1;
    const char *v = line + off;
    struct gpu *g = &s->gpus[i];
    if (i >= s->ngpus) s->ngpus = i + 1;
    if (!strcmp(key, "uuid")) return copy_str(g->uuid, sizeof g->uuid, v);
    if (!strcmp(key, "name")) return copy_str(g->name, sizeof g->name, v);
    if (!strcmp(key, "pci")) return set_pci(g, v);
    if (!strcmp(key, "unsupported")) {
        size_t n = strlen(g->unsupported);
        if (n + strlen(v) + 2 >= sizeof g->unsupported) return -1;
        sprintf(g->unsupported + n, "%s ", v); /* kept as " a b c " */
        return 0;
    }
    if (!strcmp(key, "sm_activity")) {
        char *end;
        if (!*v) return -1;
        g->sm_activity = strtod(v, &end);
        return *end ? -1 : 0;
    }
    if (!strcmp(key, "compute_capability"))
        return sscanf(v, "%u.%u%n", &g->cc_major, &g->cc_minor, &off) == 2 && !v[off] ? 0 : -1;
    static const struct { const char *key; size_t off; } u64s[] = {
        {"memory_total", offsetof(struct gpu, memory_total)},
        {"memory_used", offsetof(struct gpu, memory_used)},
        {"memory_reserved", offsetof(struct gpu, memory_reserved)},
        {"ecc_corrected", offsetof(struct gpu, ecc[0])},
        {"ecc_uncorrected", offsetof(struct gpu, ecc[1])},
        {"energy_mj", offsetof(struct gpu, energy_mj)},
    };
    static const struct { const char *key; size_t off; } u32s[] = {
        {"util", offsetof(struct gpu, util)},
        {"memory_util", offsetof(struct gpu, memory_util)},
        {"power_mw", offsetof(struct gpu, power_mw)},
        {"temperature", offsetof(struct gpu, temperature)},
        {"lost", offsetof(struct gpu, lost)},
        {"minor", offsetof(struct gpu, minor)},
        {"pci_device_id", offsetof(struct gpu, pci_device_id)},
        {"retired_pages_pending", offsetof(struct gpu, retired_pending)},
        {"gpm", offsetof(struct gpu, gpm)},
        {"process_list_growth", offsetof(struct gpu, process_list_growth)},
    };
    for (size_t k = 0; k < sizeof u64s / sizeof *u64s; k++)
        if (!strcmp(key, u64s[k].key))
            return parse_u64(v, (unsigned long long *)((char *)g + u64s[k].off));
    for (size_t k = 0; k < sizeof u32s / sizeof *u32s; k++)
        if (!strcmp(key, u32s[k].key))
            return parse_u32(v, (unsigned int *)((char *)g + u32s[k].off));
    return -1;
}

/* "process <gpu> <pid> [used_memory N] [gpu_instance N] [compute_instance N]" */
static int parse_process_line(struct state *s, char *line)
{
    struct proc p = {0, 0, NOT_AVAILABLE_U32, NOT_AVAILABLE_U32, NOT_AVAILABLE_U64};
    char *save, *tok = strtok_r(line, " ", &save);
    if (!(tok = strtok_r(NULL, " ", &save)) || parse_u32(tok, &p.gpu) || p.gpu >= MAX_GPUS) return -1;
    if (!(tok = strtok_r(NULL, " ", &save)) || parse_u32(tok, &p.pid)) return -1;
    while ((tok = strtok_r(NULL, " ", &save))) {
        char *val = strtok_r(NULL, " ", &save);
        if (!val) return -1;
        if (!strcmp(tok, "used_memory") && !parse_u64(val, &p.used)) continue;
        if (!strcmp(tok, "gpu_instance") && !parse_u32(val, &p.gi)) continue;
        if (!strcmp(tok, "compute_instance") && !parse_u32(val, &p.ci)) continue;
        return -1;
    }
    if (s->nprocs == s->cap_procs && !(s->procs = grow(s->procs, &s->cap_procs, sizeof p))) return -1;
    s->procs[s->nprocs++] = p;
    return 0;
}

static int parse_line(struct state *s, char *line)
{
    char word[32];
    int off = 0;
    unsigned int a, b, level;
    struct sample x;
    if (sscanf(line, "%31s %n", word, &off) != 1) return 0; /* blank */
    if (word[0] == '#' || !strcmp(word, "generation")) return 0;
    if (!strcmp(word, "driver")) return copy_str(s->driver, sizeof s->driver, line + off);
    if (!strcmp(word, "nvml_version")) return copy_str(s->nvml_version, sizeof s->nvml_version, line + off);
    if (!strcmp(word, "cuda")) {
        const char *v = line + off;
        return sscanf(v, "%d%n", &s->cuda, &off) == 1 && !v[off] ? 0 : -1;
    }
    if (!strcmp(word, "gpu")) return parse_gpu_line(s, line);
    if (!strcmp(word, "process")) return parse_process_line(s, line);
    if (!strcmp(word, "sample")) {
        if (sscanf(line, "sample %u %u %llu %u %u %u %u %n", &x.gpu, &x.pid, &x.ts, &x.sm, &x.mem,
                   &x.enc, &x.dec, &off) != 7 || line[off] || x.gpu >= MAX_GPUS)
            return -1;
        if (s->nsamples == s->cap_samples && !(s->samples = grow(s->samples, &s->cap_samples, sizeof x)))
            return -1;
        s->samples[s->nsamples++] = x;
        return 0;
    }
    if (!strcmp(word, "topology")) {
        if (sscanf(line, "topology %u %u %u %n", &a, &b, &level, &off) != 3 || line[off] ||
            a >= MAX_GPUS || b >= MAX_GPUS || level > 250)
            return -1;
        s->topology[a][b] = s->topology[b][a] = (unsigned char)(level + 1);
        return 0;
    }
    return -1;
}

static void default_state(struct state *s)
{
    memset(s, 0, sizeof *s);
    strcpy(s->driver, "550.54.15");
    s->cuda = 12040;
    for (unsigned int i = 0; i < MAX_GPUS; i++) {
        struct gpu *g = &s->gpus[i];
        snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012x", i);
        strcpy(g->name, "NVIDIA Fake GPU");
        g->bus = i + 1;
        snprintf(g->busId, sizeof g->busId, "%08X:%02X:00.0", 0, i + 1);
        g->minor = i;
        g->cc_major = 9;
        g->memory_total = 85520809984ull; /* 81559 MiB, an H100 80GB HBM3 */
        g->temperature = 30;
        g->power_mw = 70000;
    }
}

/* Parse the file into `next`; on success replace `cur` (handles stay valid). */
static nvmlReturn_t load_state(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NVML_ERROR_DRIVER_NOT_LOADED;
    default_state(&next);
    char *line = NULL;
    size_t len = 0;
    ssize_t n;
    int lineno = 0, bad = 0;
    while (!bad && (n = getline(&line, &len, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
        if (parse_line(&next, line)) {
            fprintf(stderr, "fakenvml: %s:%d: cannot parse: %s\n", path, lineno, line);
            bad = 1;
        }
    }
    free(line);
    fclose(f);
    if (bad) {
        free(next.procs);
        free(next.samples);
        return NVML_ERROR_UNKNOWN;
    }
    if (!next.nvml_version[0])
        snprintf(next.nvml_version, sizeof next.nvml_version, "%d.%s", next.cuda / 1000, next.driver);
    free(cur.procs);
    free(cur.samples);
    cur = next;
    return NVML_SUCCESS;
}

/* Re-read the state file if it changed.  Once initialized, a file that has
 * gone keeps the last state. */
static nvmlReturn_t refresh(void)
{
    const char *path = getenv("FAKE_NVML_STATE");
    struct stat st;
    if (!path || !*path || strlen(path) >= sizeof seen.path || stat(path, &st))
        return refcount ? NVML_SUCCESS : NVML_ERROR_DRIVER_NOT_LOADED;
    if (!strcmp(path, seen.path) && st.st_dev == seen.st.st_dev && st.st_ino == seen.st.st_ino &&
        st.st_size == seen.st.st_size && st.st_mtim.tv_sec == seen.st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == seen.st.st_mtim.tv_nsec)
        return NVML_SUCCESS;
    nvmlReturn_t r = load_state(path);
    if (r == NVML_SUCCESS) {
        strcpy(seen.path, path);
        seen.st = st;
    }
    return r;
}

/* ---- plumbing ------------------------------------------------------------ */

static nvmlReturn_t leave(nvmlReturn_t r)
{
    pthread_mutex_unlock(&lock);
    return r;
}

/* Lock (always; pair with leave()), then check init and reload the state. */
static nvmlReturn_t enter(void)
{
    pthread_mutex_lock(&lock);
    return refcount ? refresh() : NVML_ERROR_UNINITIALIZED;
}

/* "gpu N unsupported <key>": key is the short name or the NVML function name
 * (a versioned function also matches its unversioned name). */
static int unsupported(const struct gpu *g, const char *key, const char *func)
{
    const char *u = g->unsupported;
    size_t flen = strcspn(func, "_");
    while (*u) {
        size_t n = strcspn(u, " ");
        if ((n == strlen(key) && !strncmp(u, key, n)) || (n == strlen(func) && !strncmp(u, func, n)) ||
            (n == flen && !strncmp(u, func, n)))
            return 1;
        u += n;
        u += strspn(u, " ");
    }
    return 0;
}

static nvmlReturn_t check_device(nvmlDevice_t d, struct gpu **g)
{
    uintptr_t off = (uintptr_t)d - (uintptr_t)cur.gpus;
    if (!d || off >= sizeof cur.gpus || off % sizeof *d) return NVML_ERROR_INVALID_ARGUMENT;
    if ((unsigned int)(d - cur.gpus) >= cur.ngpus || d->lost) return NVML_ERROR_GPU_IS_LOST;
    *g = d;
    return NVML_SUCCESS;
}

static nvmlReturn_t enter_dev(nvmlDevice_t d, const char *key, const char *func, struct gpu **g)
{
    nvmlReturn_t r = enter();
    if (r == NVML_SUCCESS) r = check_device(d, g);
    if (r == NVML_SUCCESS && unsupported(*g, key, func)) r = NVML_ERROR_NOT_SUPPORTED;
    return r;
}
#define ENTER_DEV(d, key, g) enter_dev((d), (key), __func__, (g))

static nvmlReturn_t put_str(char *buf, unsigned int len, const char *s)
{
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, s);
    return NVML_SUCCESS;
}

static unsigned int index_of(const struct gpu *g) { return (unsigned int)(g - cur.gpus); }

/* ---- init and system ----------------------------------------------------- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = refresh();
    if (r == NVML_SUCCESS) refcount++;
    return leave(r);
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&lock);
    if (!refcount) return leave(NVML_ERROR_UNINITIALIZED);
    refcount--;
    return leave(NVML_SUCCESS);
}

/* Not NVML: lets a test fixture drop leftover init references between tests. */
void fakeNvmlReset(void)
{
    pthread_mutex_lock(&lock);
    refcount = 0;
    seen.path[0] = 0;
    pthread_mutex_unlock(&lock);
}

const char *nvmlErrorString(nvmlReturn_t r)
{
    switch ((int)r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 20: return "Insufficient Memory";
    case 25: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = enter();
    return leave(r ? r : put_str(version, length, cur.driver));
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t r = enter();
    return leave(r ? r : put_str(version, length, cur.nvml_version));
}

/* Works without nvmlInit, like the real one. */
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = refresh();
    if (r == NVML_SUCCESS) {
        if (!version) r = NVML_ERROR_INVALID_ARGUMENT;
        else *version = cur.cuda;
    }
    return leave(r);
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }

/* ---- device enumeration -------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    nvmlReturn_t r = enter();
    if (r == NVML_SUCCESS && !count) r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS) *count = cur.ngpus;
    return leave(r);
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t r = enter();
    if (r == NVML_SUCCESS && (index >= cur.ngpus || !device)) r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS && cur.gpus[index].lost) r = NVML_ERROR_GPU_IS_LOST;
    if (r == NVML_SUCCESS) *device = &cur.gpus[index];
    return leave(r);
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

static nvmlReturn_t handle_by(const char *id, nvmlDevice_t *device, int by_pci)
{
    nvmlReturn_t r = enter();
    if (r == NVML_SUCCESS && (!id || !device)) r = NVML_ERROR_INVALID_ARGUMENT;
    if (r) return leave(r);
    r = NVML_ERROR_NOT_FOUND;
    for (unsigned int i = 0; i < cur.ngpus; i++) {
        struct gpu *g = &cur.gpus[i];
        /* a short bus id ("0000:17:00.0") matches the 8-digit domain form */
        size_t n = strlen(id);
        int match = by_pci ? (n <= strlen(g->busId) && !strcasecmp(id, g->busId + strlen(g->busId) - n) &&
                              n >= 12)
                           : !strcmp(id, g->uuid);
        if (match) {
            r = g->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
            *device = g;
            break;
        }
    }
    return leave(r);
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) { return handle_by(uuid, device, 0); }
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *id, nvmlDevice_t *device) { return handle_by(id, device, 1); }

/* ---- device queries ------------------------------------------------------ */

#define OUT_ARG(p) if (r == NVML_SUCCESS && !(p)) r = NVML_ERROR_INVALID_ARGUMENT; if (r == NVML_SUCCESS)

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "index", &g);
    OUT_ARG(index) *index = index_of(g);
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "minor", &g);
    OUT_ARG(minor) *minor = g->minor;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "uuid", &g);
    return leave(r ? r : put_str(uuid, length, g->uuid));
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "name", &g);
    return leave(r ? r : put_str(name, length, g->name));
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "pci", &g);
    OUT_ARG(pci) {
        memset(pci, 0, sizeof *pci);
        snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", g->domain & 0xFFFF, g->bus,
                 g->device);
        strcpy(pci->busId, g->busId);
        pci->domain = g->domain;
        pci->bus = g->bus;
        pci->device = g->device;
        pci->pciDeviceId = g->pci_device_id;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "compute_capability", &g);
    OUT_ARG(major && minor) {
        *major = (int)g->cc_major;
        *minor = (int)g->cc_minor;
    }
    return leave(r);
}

static unsigned long long mem_free(const struct gpu *g)
{
    unsigned long long taken = g->memory_used + g->memory_reserved;
    return taken > g->memory_total ? 0 : g->memory_total - taken;
}

/* v1 "used" includes the driver-reserved memory; v2 reports it apart. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "memory", &g);
    OUT_ARG(m) {
        m->total = g->memory_total;
        m->free = mem_free(g);
        m->used = g->memory_used + g->memory_reserved;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "memory", &g);
    OUT_ARG(m) {
        if (m->version != nvmlMemory_v2) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        m->total = g->memory_total;
        m->reserved = g->memory_reserved;
        m->free = mem_free(g);
        m->used = g->memory_used;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "utilization", &g);
    OUT_ARG(u) {
        u->gpu = g->util;
        u->memory = g->memory_util;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "power", &g);
    OUT_ARG(mw) *mw = g->power_mw;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "temperature", &g);
    OUT_ARG(temp && sensor == 0) *temp = g->temperature;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t d, nvmlTemperature_t *t)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "temperature", &g);
    OUT_ARG(t) {
        if (t->version != nvmlTemperature_v1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        if (t->sensorType != 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
        t->temperature = (int)g->temperature;
    }
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int errorType, int counterType,
                                         unsigned long long *count)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "ecc", &g);
    OUT_ARG(count && (errorType == 0 || errorType == 1) && (counterType == 0 || counterType == 1))
        *count = g->ecc[errorType];
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t d, int *pending)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "retired_pages", &g);
    OUT_ARG(pending) *pending = g->retired_pending ? 1 : 0;
    return leave(r);
}

nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t d1, nvmlDevice_t d2, int *level)
{
    struct gpu *g1, *g2;
    nvmlReturn_t r = ENTER_DEV(d1, "topology", &g1);
    if (r == NVML_SUCCESS) r = check_device(d2, &g2);
    OUT_ARG(level) {
        unsigned char t = cur.topology[index_of(g1)][index_of(g2)];
        *level = g1 == g2 ? TOPOLOGY_INTERNAL : t ? t - 1 : TOPOLOGY_SYSTEM;
    }
    return leave(r);
}

/* ---- processes ----------------------------------------------------------- */

/* Size-query protocol: too small a buffer (or NULL) gives INSUFFICIENT_SIZE
 * and the needed count; no processes at all gives SUCCESS and 0. */
static nvmlReturn_t running_processes(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos,
                                      const char *func)
{
    struct gpu *g;
    nvmlReturn_t r = enter_dev(d, "processes", func, &g);
    if (r == NVML_SUCCESS && !count) r = NVML_ERROR_INVALID_ARGUMENT;
    if (r) return leave(r);
    unsigned int i = index_of(g), n = 0, k = 0;
    for (unsigned int j = 0; j < cur.nprocs; j++) n += cur.procs[j].gpu == i;
    /* a list call (a buffer given) finds process_list_growth more than the count call did */
    unsigned int listed = infos ? n + g->process_list_growth : n;
    if (listed > *count || (n && !infos)) {
        *count = listed;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int j = 0; j < cur.nprocs; j++) {
        const struct proc *p = &cur.procs[j];
        if (p->gpu == i) infos[k++] = (nvmlProcessInfo_t){p->pid, p->used, p->gi, p->ci};
    }
    *count = n;
    return leave(NVML_SUCCESS);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)
{
    return running_processes(d, count, infos, __func__);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos)
{
    return running_processes(d, count, infos, __func__);
}

/* Samples of this GPU newer than lastSeen, in file order.  With buf NULL or
 * *count too small: INSUFFICIENT_SIZE and the needed count; none newer:
 * NOT_FOUND.  `fill` copies sample j into slot k. */
static nvmlReturn_t process_samples(nvmlDevice_t d, unsigned int *count, void *buf, unsigned long long last_seen,
                                    void (*fill)(void *, unsigned int, const struct sample *), const char *func)
{
    struct gpu *g;
    nvmlReturn_t r = enter_dev(d, "process_utilization", func, &g);
    if (r == NVML_SUCCESS && !count) r = NVML_ERROR_INVALID_ARGUMENT;
    if (r) return leave(r);
    unsigned int i = index_of(g), n = 0, k = 0;
    for (unsigned int j = 0; j < cur.nsamples; j++)
        n += cur.samples[j].gpu == i && cur.samples[j].ts > last_seen;
    if (!n) return leave(NVML_ERROR_NOT_FOUND);
    if (!buf || n > *count) {
        *count = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int j = 0; j < cur.nsamples; j++)
        if (cur.samples[j].gpu == i && cur.samples[j].ts > last_seen) fill(buf, k++, &cur.samples[j]);
    *count = n;
    return leave(NVML_SUCCESS);
}

static void fill_sample(void *buf, unsigned int k, const struct sample *s)
{
    ((nvmlProcessUtilizationSample_t *)buf)[k] =
        (nvmlProcessUtilizationSample_t){s->pid, s->ts, s->sm, s->mem, s->enc, s->dec};
}

static void fill_info_v1(void *buf, unsigned int k, const struct sample *s)
{
    ((nvmlProcessUtilizationInfo_v1_t *)buf)[k] =
        (nvmlProcessUtilizationInfo_v1_t){s->ts, s->pid, s->sm, s->mem, s->enc, s->dec, 0, 0};
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *count, unsigned long long lastSeenTimeStamp)
{
    return process_samples(d, count, utilization, lastSeenTimeStamp, fill_sample, __func__);
}

nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t d, nvmlProcessesUtilizationInfo_t *info)
{
    if (info && info->version != nvmlProcessesUtilizationInfo_v1) {
        /* still report "uninitialized"/"lost" first, like the other calls */
        struct gpu *g;
        nvmlReturn_t r = ENTER_DEV(d, "process_utilization", &g);
        return leave(r ? r : NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    }
    return process_samples(d, info ? &info->processSamplesCount : NULL, info ? info->procUtilArray : NULL,
                           info ? info->lastSeenTimeStamp : 0, fill_info_v1, __func__);
}

/* ---- energy -------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *energy)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "energy", &g);
    OUT_ARG(energy) *energy = g->energy_mj;
    return leave(r);
}

/* ---- GPM (Hopper and later) ---------------------------------------------- *
 * A sample remembers the GPU and its sm_activity when it was taken; the
 * metrics between two samples give the later sample's value.  A GPU is a GPM
 * GPU when its state says "gpm 1"; "unsupported gpm" makes every GPM call on
 * it NOT_SUPPORTED (a driver without GPM). */

#define GPM_SAMPLE_MAGIC 0x47504d53u
#define GPM_METRIC_SM_UTIL 2
typedef struct { unsigned int version, isSupportedDevice; } nvmlGpmSupport_t;
struct gpm_sample { unsigned int magic, gpu; int taken; double sm; unsigned long long seq; };
typedef struct gpm_sample *nvmlGpmSample_t;
typedef struct { const char *shortName, *longName, *unit; } nvmlGpmMetricInfo_t;
typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    nvmlGpmMetricInfo_t metricInfo;
} nvmlGpmMetric_t;
typedef struct {
    unsigned int version, numMetrics;
    nvmlGpmSample_t sample1, sample2;
    nvmlGpmMetric_t metrics[]; /* NVML_GPM_METRIC_MAX of them; numMetrics are read */
} nvmlGpmMetricsGet_t;

static unsigned long long gpm_seq;
static int gpm_allocated;

/* Not NVML: how many GPM samples are allocated and not freed. */
int fakeNvmlGpmSamplesAllocated(void)
{
    pthread_mutex_lock(&lock);
    int n = gpm_allocated;
    pthread_mutex_unlock(&lock);
    return n;
}

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *support)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "gpm", &g);
    OUT_ARG(support) {
        if (support->version != 1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        support->isSupportedDevice = g->gpm ? 1 : 0;
    }
    return leave(r);
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample)
{
    nvmlReturn_t r = enter();
    OUT_ARG(sample) {
        struct gpm_sample *s = calloc(1, sizeof *s);
        if (!s) return leave(NVML_ERROR_MEMORY);
        s->magic = GPM_SAMPLE_MAGIC;
        *sample = s;
        gpm_allocated++;
    }
    return leave(r);
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample)
{
    nvmlReturn_t r = enter();
    OUT_ARG(sample && sample->magic == GPM_SAMPLE_MAGIC) {
        sample->magic = 0;
        free(sample);
        gpm_allocated--;
    }
    return leave(r);
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t sample)
{
    struct gpu *g;
    nvmlReturn_t r = ENTER_DEV(d, "gpm", &g);
    if (r == NVML_SUCCESS && !g->gpm) r = NVML_ERROR_NOT_SUPPORTED;
    OUT_ARG(sample && sample->magic == GPM_SAMPLE_MAGIC) {
        sample->gpu = index_of(g);
        sample->sm = g->sm_activity;
        sample->seq = ++gpm_seq;
        sample->taken = 1;
    }
    return leave(r);
}

/* Two samples of one GPU, the first taken before the second, else INVALID_ARGUMENT. */
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m)
{
    nvmlReturn_t r = enter();
    OUT_ARG(m) {
        const struct gpm_sample *a = m->sample1, *b = m->sample2;
        if (m->version != 1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        if (!a || !b || a->magic != GPM_SAMPLE_MAGIC || b->magic != GPM_SAMPLE_MAGIC || !a->taken ||
            !b->taken || a->gpu != b->gpu || a->seq >= b->seq || m->numMetrics > 1000)
            return leave(NVML_ERROR_INVALID_ARGUMENT);
        if (a->gpu >= cur.ngpus || cur.gpus[a->gpu].lost) return leave(NVML_ERROR_GPU_IS_LOST);
        for (unsigned int i = 0; i < m->numMetrics; i++) {
            nvmlGpmMetric_t *x = &m->metrics[i];
            if (x->metricId == GPM_METRIC_SM_UTIL) {
                x->nvmlReturn = NVML_SUCCESS;
                x->value = b->sm;
                x->metricInfo = (nvmlGpmMetricInfo_t){"sm_util", "SM utilization", "%"};
            } else {
                x->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
                x->value = 0;
            }
        }
    }
    return leave(r);
}
