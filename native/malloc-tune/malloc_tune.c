/*
 * mallopt() for the writer's processes. glibc raises its mmap threshold to the size of each large
 * block freed (up to 32 MiB), after which 4-16 MiB file bodies and chunks come from the heap and
 * stay there once freed: a 1 GiB ingest kept 100-150 MB of freed blocks. A fixed threshold sends
 * every block above it to mmap, so a freed body goes back to the system at once.
 *
 * Each thread that meets a locked arena gets one of its own (up to 8 per core), and an arena keeps
 * what its thread freed: the writer's deflate workers held 20-40 MB each. M_ARENA_MAX caps them.
 */
#include <node_api.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

static napi_value set_mmap_threshold(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int64_t bytes = 0;
  int ok = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &bytes) != napi_ok) {
    napi_throw_type_error(env, NULL, "setMmapThreshold(bytes: number)");
    return NULL;
  }
#ifdef __GLIBC__
  /* M_MMAP_THRESHOLD also fixes the trim threshold (no more dynamic adjustment). */
  ok = bytes > 0 && bytes <= 32 * 1024 * 1024 && mallopt(M_MMAP_THRESHOLD, (int)bytes) == 1;
#endif
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value set_arena_max(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int64_t n = 0;
  int ok = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int64(env, argv[0], &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "setArenaMax(arenas: number)");
    return NULL;
  }
#ifdef __GLIBC__
  ok = n >= 1 && n <= 64 && mallopt(M_ARENA_MAX, (int)n) == 1;
#endif
  napi_get_boolean(env, ok, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "setMmapThreshold", NAPI_AUTO_LENGTH, set_mmap_threshold, NULL, &fn);
  napi_set_named_property(env, exports, "setMmapThreshold", fn);
  napi_create_function(env, "setArenaMax", NAPI_AUTO_LENGTH, set_arena_max, NULL, &fn);
  napi_set_named_property(env, exports, "setArenaMax", fn);
  return exports;
}
