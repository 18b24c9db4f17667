/* The part of QEMU's TCG plugin API (include/qemu/qemu-plugin.h, "QEMU TCG Plugins" in QEMU's
 * documentation) that s4op_insn_profile.c uses, declared here because no Debian package ships
 * qemu-plugin.h. These declarations are the same in QEMU 7.2 (plugin API version 1) and QEMU 9
 * (version 2; only added functions since). The functions are resolved from the QEMU binary when
 * the plugin is loaded.
 *
 * S4OP_QEMU_PLUGIN_VERSION is the API version this plugin claims (the exported
 * qemu_plugin_version): QEMU 7.2 accepts 0 or 1 and refuses 2, QEMU >= 9 requires >= 2. The build
 * (s4op_micro/measure/profile.py) sets it from `qemu-system-arm --version`. */
#ifndef S4OP_QEMU_PLUGIN_H
#define S4OP_QEMU_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifndef S4OP_QEMU_PLUGIN_VERSION
#define S4OP_QEMU_PLUGIN_VERSION 1
#endif

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;   /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

QEMU_PLUGIN_EXPORT extern int qemu_plugin_version;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_outs(const char *string);

#endif
