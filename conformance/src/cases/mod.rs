//! The case table, in run order. Each case is an `async fn(&Ctx) -> anyhow::Result<()>` that
//! checks one behaviour a CRI user sees and cleans up what it made.

use crate::ctx::Ctx;
use futures_util::future::BoxFuture;

/// One case: its name and its function.
pub type Case = (&'static str, for<'a> fn(&'a Ctx) -> BoxFuture<'a, anyhow::Result<()>>);

macro_rules! case {
    ($name:literal, $f:path) => {
        ($name, |c| Box::pin($f(c)) as futures_util::future::BoxFuture<'_, anyhow::Result<()>>)
    };
}

mod authority;
mod cgroupdriver;
mod container;
mod cri036;
mod cstatus;
mod errors;
mod events;
mod exec;
mod handlers;
pub(crate) mod hooks;
mod image;
pub mod import;
mod inspect;
mod isolation;
mod leaks;
mod mac_sysctl;
mod metrics;
mod monitor;
mod namespaces;
mod nri;
mod oom;
mod pod;
mod podnet;
mod restart;
mod runtime_info;
mod security;
mod stats;
mod stream_hostile;
mod streaming;
mod userns;
pub(crate) mod util;

/// Every case in run order: runtime info, images, pods, containers, exec, restart, leak checks.
pub fn all() -> Vec<Case> {
    let mut v: Vec<Case> = vec![
        case!("version", image::version),
        case!("status_ready", image::status_ready),
        case!("authority_any_form_version", authority::version_any_authority),
        case!("authority_socket_path_pod_and_exec", authority::pod_and_exec_with_socket_path),
        case!("authority_grpcio_default_channel", authority::grpcio_default_channel),
        case!("pull_by_tag", image::pull_by_tag),
        case!("pull_by_digest", image::pull_by_digest),
        case!("pull_tag_and_digest", image::pull_tag_and_digest),
        case!("image_many_layers_runs", image::many_layers_run),
        case!("image_without_layers_runs", image::no_layers_run),
        case!("pull_docker_schema2", image::pull_docker_schema2),
        case!("pull_multiarch_index", image::pull_multiarch_index),
        case!("pull_missing_image", image::pull_missing_image),
        case!("pull_through_k8s_mirror", image::pull_through_k8s_mirror),
        case!("list_images", image::list_images),
        case!("image_status_fields", image::image_status_fields),
        case!("image_status_user", image::image_status_user),
        case!("image_status_missing", image::image_status_missing),
        case!("remove_image_by_tag", image::remove_image_by_tag),
        case!("remove_image_by_id", image::remove_image_by_id),
        case!("remove_image_twice", image::remove_image_twice),
        case!("remove_image_in_use", image::remove_image_in_use),
        case!("image_import_through_daemon", import::through_daemon),
        case!("image_import_daemon_stopped", import::daemon_stopped),
        case!("image_export_round_trip", import::export_round_trip),
        case!("pod_run_status", pod::run_status),
        case!("pod_list_filters", pod::list_filters),
        case!("pod_same_metadata_twice", pod::same_metadata_twice),
        case!("pod_remove_missing", pod::remove_missing),
        case!("pod_stop_remove_with_running_containers", pod::stop_remove_with_running),
        case!("container_exit_code_and_logs", container::exit_code_and_logs),
        case!("log_last_line_without_newline_is_full", container::last_line_without_newline_case),
        case!("container_exit_zero_completed", container::exit_zero_completed),
        case!("container_user_image_uid", container::user_image_uid),
        case!("container_layers_whiteouts", container::layers_whiteouts),
        case!("container_localhost_between_containers", container::localhost_between_containers),
        case!("container_list_filters", container::list_filters),
        case!("container_create_in_missing_pod", container::create_in_missing_pod),
        case!("container_duplicate_name", container::duplicate_name),
        case!("container_stop_timeout_kills", exec::stop_timeout_kills),
        case!("container_stop_force_preempts_graceful", exec::stop_force_preempts_graceful),
        case!("container_stop_remove_twice", exec::stop_remove_twice),
        case!("exec_sync_output", exec::exec_sync_output),
        case!("exec_sync_timeout", exec::exec_sync_timeout),
        case!("runtime_config_cgroup_driver", runtime_info::runtime_config_cgroup_driver),
        case!("cgroup_parent_of_other_driver_refused", cgroupdriver::other_driver_parent_refused),
        case!("cgroup_systemd_scopes", cgroupdriver::systemd_scopes),
        case!("update_runtime_config", runtime_info::update_runtime_config),
        case!("image_fs_info", runtime_info::image_fs_info),
        case!("host_network_pod", podnet::host_network_pod),
        case!("pod_dns_and_hostname", podnet::pod_dns_and_hostname),
        case!("container_status_fields", cstatus::container_status_fields),
        case!("tty_container_logs", cstatus::tty_container_logs),
        case!("bad_input_codes", errors::bad_input_codes),
        case!("exec_in_exited_container", errors::exec_in_exited_container),
        case!("deadline_passed_is_deadline_exceeded", errors::deadline_passed_is_deadline_exceeded),
        case!("security_seccomp_runtime_default", security::seccomp_runtime_default),
        case!("security_seccomp_unconfined", security::seccomp_unconfined),
        case!("security_seccomp_localhost_denies_mkdir", security::seccomp_localhost_denies_mkdir),
        case!("security_seccomp_localhost_missing", security::seccomp_localhost_missing),
        case!("security_seccomp_localhost_not_a_file", security::seccomp_localhost_not_a_file),
        case!("security_no_new_privs", security::no_new_privs),
        case!("security_caps_drop_all_add_net_bind", security::caps_drop_all_add_one),
        case!("security_privileged", security::privileged),
        case!("security_readonly_rootfs", security::readonly_rootfs),
        case!("security_masked_path", security::masked_path),
        case!("security_run_as_ids", security::run_as_ids),
        case!("security_run_as_group_alone", security::run_as_group_alone),
        case!("security_status_user", security::status_user),
        case!("security_readonly_paths", security::readonly_paths),
        case!("security_default_masks_and_privileged_none", security::default_masks_and_privileged_none),
        case!("security_run_as_username", security::run_as_username),
        case!("security_supplemental_groups_policy", security::supplemental_groups_policy),
        case!("start_exited_container", errors::start_exited_container),
        case!("memory_limit_applied", cstatus::memory_limit_applied),
        case!("log_paths_refused", errors::log_paths_refused),
        case!("oom_killed", oom::oom_killed),
        case!("log_size_limit", oom::log_size_limit),
        case!("inspect_status_container_and_pod", inspect::status_shows_container_and_pod),
        case!("oci_hooks_run_at_their_stages", hooks::hooks_run_at_their_stages),
        case!("nri_adjustments_reach_the_container", nri::adjustments_reach_the_container),
        case!("nri_hung_plugin_is_dropped", nri::a_hung_plugin_is_dropped),
        case!("nri_updates_reach_other_containers", nri::updates_reach_other_containers),
        case!("nri_plugins_before_v012_get_state_changes", nri::plugins_before_v012_get_state_changes),
        case!("nri_launched_plugin_runs_with_its_config", nri::launched_plugin_runs_with_its_config),
        case!("oci_hook_failing_fails_create", hooks::failing_hook_fails_create),
        case!("inspect_any_host_header", inspect::any_host_header),
        case!("stats_cpu_moves", stats::cpu_moves),
        case!("stats_memory_grows", stats::memory_grows),
        case!("stats_list_filters", stats::list_filters),
        case!("stats_pod_network", stats::pod_stats_network),
        case!("stats_update_resources", stats::update_resources),
        case!("stats_match_kernel_v2", stats::stats_match_kernel_v2),
        case!("stream_exec_exit_code", streaming::exec_exit_code),
        case!("stream_exec_stdin", streaming::exec_stdin),
        case!("stream_exec_tty", streaming::exec_tty),
        case!("stream_attach_output", streaming::attach_output),
        case!("stream_port_forward", streaming::port_forward),
        case!("stream_port_forward_parallel", streaming::port_forward_parallel),
        case!("stream_hostile_input", stream_hostile::hostile_input),
        case!("events_pod_lifecycle_in_order", events::pod_lifecycle_in_order),
        case!("reopen_log_while_writing", events::reopen_log_while_writing),
        case!("metrics_endpoint_counts", metrics::endpoint_counts),
        case!("metrics_pod_sandbox_cpu_grows", metrics::pod_sandbox_metrics_cpu_grows),
        case!("metrics_cadvisor_set_with_values", metrics::cadvisor_set_with_values),
        case!("monitor_killed", monitor::monitor_killed),
    ];
    // Issue #5 part B: mounts and namespaces, MAC and sysctls, user namespaces.
    v.extend(handlers::cases());
    v.extend(namespaces::cases());
    v.extend(isolation::cases());
    v.extend(mac_sysctl::cases());
    v.extend(userns::cases());
    // Issue #9: what cri-api v0.36 added.
    v.extend(cri036::cases());
    v.push(case!("daemon_restart_keeps_containers", restart::keeps_containers));
    v.push(case!("daemon_restart_pod_without_infra", restart::pod_without_infra));
    v.push(case!("daemon_killed_keeps_containers", restart::killed_keeps_containers));
    v.push(case!("daemon_sd_notify_ready", restart::sd_notify_ready));
    v.push(case!("daemon_refuses_chroot", restart::refuses_chroot));
    v.push(case!("upgrade_from_older_berth_keeps_records", restart::upgrade_keeps_records));
    v.push(case!("no_leftovers_after_suite", leaks::no_leftovers));
    v
}
