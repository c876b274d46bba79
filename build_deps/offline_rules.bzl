"""Local stand-ins for @rules_cc, @rules_java and @remote_coverage_tools.

Bazel 4.2's own @bazel_tools loads @rules_cc//cc:defs.bzl (C++ toolchain) and
@rules_java//java:defs.bzl (the JDK toolchains it registers), and would fetch
both from GitHub. Those .bzl files only forward to Bazel's native rules at
that version, so two generated forwarding repositories let every build run
offline. Nothing in this project loads them directly: our BUILD files use the
native rules, so they also work unchanged inside newer Bazels (TF Serving).
"""

_CC_RULES = [
    "cc_binary",
    "cc_import",
    "cc_library",
    "cc_proto_library",
    "cc_test",
    "cc_toolchain",
    "cc_toolchain_suite",
    "fdo_prefetch_hints",
    "fdo_profile",
    "objc_import",
    "objc_library",
]

_JAVA_RULES = [
    "java_binary",
    "java_import",
    "java_library",
    "java_lite_proto_library",
    "java_package_configuration",
    "java_plugin",
    "java_proto_library",
    "java_runtime",
    "java_test",
    "java_toolchain",
]

def _forwarders(rules):
    return "".join([
        "def %s(**attrs):\n    native.%s(**attrs)\n\n" % (rule, rule)
        for rule in rules
    ])

def _forwarding_repo_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", "")
    ctx.file(ctx.attr.package + "/defs.bzl", _forwarders(ctx.attr.rules))
    ctx.file(ctx.attr.package + "/BUILD", ctx.attr.build_file_content)

_forwarding_repo = repository_rule(
    implementation = _forwarding_repo_impl,
    attrs = {
        "package": attr.string(mandatory = True),
        "rules": attr.string_list(mandatory = True),
        "build_file_content": attr.string(default = ""),
    },
)

def _no_coverage_tools_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("unavailable.sh", """#!/bin/sh
echo "bazel coverage needs @remote_coverage_tools, which offline builds lack" >&2
exit 1
""", executable = True)
    ctx.file("BUILD", """[
    sh_binary(
        name = name,
        srcs = ["unavailable.sh"],
        visibility = ["//visibility:public"],
    )
    for name in ["coverage_report_generator", "lcov_merger"]
]
""")

# Every test rule has an implicit dependency on the coverage tools, which
# Bazel downloads; `bazel test` runs fine without them, `bazel coverage` not.
_no_coverage_tools = repository_rule(implementation = _no_coverage_tools_impl)

def offline_rules_repositories():
    """Defines the repositories above unless the WORKSPACE already did."""
    if "rules_cc" not in native.existing_rules():
        _forwarding_repo(
            name = "rules_cc",
            package = "cc",
            rules = _CC_RULES,
            # bazel_tools' C++ rules look the toolchain type up under rules_cc.
            build_file_content = """alias(
    name = "toolchain_type",
    actual = "@bazel_tools//tools/cpp:toolchain_type",
    visibility = ["//visibility:public"],
)
""",
        )
    if "rules_java" not in native.existing_rules():
        _forwarding_repo(
            name = "rules_java",
            package = "java",
            rules = _JAVA_RULES,
        )
    if "remote_coverage_tools" not in native.existing_rules():
        _no_coverage_tools(name = "remote_coverage_tools")
