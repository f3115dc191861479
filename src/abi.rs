//! The proxy-wasm ABI calls augur makes on the request path and on ticks,
//! declared here rather than taken from the SDK's `hostcalls`.
//!
//! Why: the SDK (0.2.5) panics on any status it does not expect — a panic is a
//! dead VM and, with `FAIL_CLOSED`, every later request failing — and several of
//! its wrappers allocate per call (property paths, header copies). These return
//! the status as an error and allocate nothing of their own. Statuses are read
//! as plain `u32`: a host may return values the SDK's enum does not list.

use crate::headers::HeaderMap;

/// `proxy_wasm::types::Status::Ok`.
const OK: u32 = 0;
/// `Status::NotFound`.
const NOT_FOUND: u32 = 1;
/// `Status::CasMismatch`.
const CAS_MISMATCH: u32 = 8;

/// `MapType` values.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;

/// `MetricType` values.
pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;
pub const HISTOGRAM: u32 = 2;

/// Why a host call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The host returned this proxy-wasm status (1 not found, 2 bad argument, …).
    Host(u32),
    /// The host returned a header map that does not follow the serialisation.
    MalformedMap,
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status::Host(status))
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
}

/// Takes ownership of a buffer the host returned.
///
/// # Safety
/// `data` must be null or point to `size` bytes the host allocated through the
/// SDK's exported allocator (`proxy_on_memory_allocate`: a boxed `[u8]` of
/// exactly `size` bytes), not owned by anything else.
unsafe fn host_buffer(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() || size == 0 {
        return None;
    }
    // SAFETY: per the contract above, length == capacity == the allocation's size.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Loads a header map of the current stream into `into` (left empty on failure).
pub fn load_header_map(map_type: u32, into: &mut HeaderMap) -> Result<(), Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers to locals; the host fills them or leaves them.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    into.clear();
    check(status)?;
    // SAFETY: on Ok the host returned a buffer allocated as `host_buffer` requires.
    match unsafe { host_buffer(data, size) } {
        Some(bytes) => into.load(bytes).map_err(|_| Status::MalformedMap),
        None => Ok(()),
    }
}

/// Sets (`Some`) or removes (`None`) a header of the current stream. (An add
/// instead of the replace is no cheaper: +4k Envoy instructions per request in
/// the same `augur_tools.bench.instr` run, 2026-12-04.)
pub fn set_header(map_type: u32, name: &str, value: Option<&str>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    let status = unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(map_type, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()),
        }
    };
    check(status)
}

/// Sets a one-segment property (filter state `wasm.<name>`).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // A one-segment path is serialised as the segment itself.
    // SAFETY: pointers and lengths of live slices; the host copies them.
    check(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Wall clock, nanoseconds since the epoch.
pub fn now_nanos() -> Result<u64, Status> {
    let mut t: u64 = 0;
    // SAFETY: out-pointer to a local.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length of a live slice; out-pointer to a local.
    check(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_record_metric(id, value) })
}

/// A shared-data value and its compare-and-swap token; `(None, None)` when absent.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: pointer and length of a live slice; out-pointers to locals.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        OK => {
            // SAFETY: on Ok the host returned a buffer allocated as `host_buffer` requires.
            let value = unsafe { host_buffer(data, size) };
            Ok((value, Some(cas)))
        }
        NOT_FOUND => Ok((None, None)),
        s => Err(Status::Host(s)),
    }
}

/// Writes a shared-data value if `cas` still matches (`None`: unconditionally).
/// `Ok(false)` on a compare-and-swap mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<bool, Status> {
    // SAFETY: pointers and lengths of live slices; the host copies them.
    let status = unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0))
    };
    match status {
        OK => Ok(true),
        CAS_MISMATCH => Ok(false),
        s => Err(Status::Host(s)),
    }
}
