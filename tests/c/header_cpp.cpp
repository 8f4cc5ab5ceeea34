// Compiles include/dashattn.h alone as C++17 (g++ -std=c++17 -Wall -Wextra -Werror -pedantic)
// and checks that the C declarations are usable from C++: extern "C" linkage, struct
// layouts, constants usable in constant expressions. Linked and run by `make test`.
#include "dashattn.h"

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(std::is_standard_layout<dashattn_tensor>::value, "dashattn_tensor is plain data");
static_assert(std::is_trivially_copyable<dashattn_config>::value, "dashattn_config is plain data");
static_assert(std::is_trivially_copyable<dashattn_context_options>::value, "options are plain data");
static_assert(sizeof(dashattn_tensor) == sizeof(void *) + 8 + 2 * 8 * DASHATTN_MAX_RANK, "tensor layout");
static_assert(sizeof(dashattn_config) == 40, "config layout");
static_assert(sizeof(dashattn_context_options) == 16, "options layout");
static_assert(std::is_same<dashattn_status, int32_t>::value, "status is int32_t");
static_assert(DASHATTN_SUCCESS == 0 && DASHATTN_ERR_INTERNAL == 15, "status codes");
static_assert(DASHATTN_DTYPE_F32 == 0 && DASHATTN_DTYPE_F64 == 4, "dtype codes");

// The function types as C++ sees them (mismatches fail to compile).
static dashattn_status (*const fwd)(dashattn_context *, const dashattn_config *, const dashattn_tensor *,
                                    const dashattn_tensor *, const dashattn_tensor *, const dashattn_tensor *,
                                    const dashattn_tensor *, const dashattn_tensor *, const dashattn_tensor *,
                                    const dashattn_tensor *, void *, size_t) = &dashattn_forward;
static size_t (*const msg)(char *, size_t) = &dashattn_last_error_message;

int main() {
    dashattn_config cfg{};
    if (dashattn_config_default(&cfg) != DASHATTN_SUCCESS || cfg.struct_size != sizeof cfg) return 1;
    // A NULL context is rejected through the C ABI from C++ too.
    dashattn_status st = fwd(nullptr, &cfg, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0);
    char buf[256];
    msg(buf, sizeof buf);
    if (st != DASHATTN_ERR_NULL_POINTER || std::strlen(buf) == 0) return 1;
    std::printf("header_cpp: C++17 OK (dashattn %s, NULL ctx -> %s)\n", dashattn_version_string(), dashattn_status_string(st));
    return 0;
}
